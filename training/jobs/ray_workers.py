"""Job workers on a Ray cluster (`loraplex worker --ray`): the same worker loop, one per Ray actor.

Each actor asks Ray for one GPU when the cluster has any (so training lands on a GPU node and gets
CUDA_VISIBLE_DEVICES), else for one CPU. The job state stays in S3: actors and plain workers on other hosts
share the queue, claim by compare-and-swap and resume each other's jobs. The LORAPLEX_* and AWS_* variables of
this process travel to the actors through the runtime_env, so nodes need no configuration of their own beyond
the base model's directory at the same path.
"""

from __future__ import annotations

import logging
import os

FORWARDED_PREFIXES = ("LORAPLEX_", "AWS_", "HF_")
log = logging.getLogger(__name__)


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that configure a worker, for the actors' runtime_env."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES)}


def actor_resources(cluster: dict[str, float], workers: int) -> dict[str, float]:
    """What one worker actor asks for: a GPU each while the cluster has one per worker, else a CPU."""
    gpus = cluster.get("GPU", 0.0)
    if gpus >= 1:
        return {"num_gpus": 1.0 if gpus >= workers else gpus / workers, "num_cpus": 1.0}
    return {"num_gpus": 0.0, "num_cpus": 1.0}


class WorkerActor:
    """A worker loop in a Ray actor; `run()` returns when `stop()` is called (jobs run: the return value)."""

    def __init__(self):
        import threading

        self._stop = threading.Event()

    def run(self) -> int:
        from training.jobs.worker import run_worker

        logging.basicConfig(level=logging.INFO)
        return run_worker(stop=self._stop)

    def stop(self) -> None:
        self._stop.set()


def run_on_ray(workers: int = 1, address: str | None = None) -> int:
    """Start `workers` worker actors on the cluster at `address` (default: a local one) and wait for them.

    Ctrl-C stops them after their current job; their leases hand unfinished jobs to other workers.
    """
    import ray

    ray.init(address=address, runtime_env={"env_vars": forwarded_env()}, include_dashboard=False,
             logging_level=logging.WARNING)
    resources = actor_resources(ray.cluster_resources(), workers)
    log.info("starting %d fine-tuning worker actor(s), each with %s", workers, resources)
    # max_concurrency 2: stop() must get through while run() is busy in the actor
    actor_cls = ray.remote(**resources, max_concurrency=2)(WorkerActor)
    actors = [actor_cls.remote() for _ in range(workers)]
    runs = [a.run.remote() for a in actors]
    try:
        return sum(ray.get(runs))
    except KeyboardInterrupt:
        ray.get([a.stop.remote() for a in actors])
        return sum(ray.get(runs))
    finally:
        ray.shutdown()
