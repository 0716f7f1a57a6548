"""`python -m training.jobs [--once] [--ray [--workers N]]`: run a fine-tuning worker (what `loraplex worker` runs)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from training.jobs.worker import run_worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.jobs", description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit when no job waits")
    parser.add_argument("--ray", action="store_true", help="run the workers as Ray actors (GPU when present)")
    parser.add_argument("--workers", type=int, default=1, help="Ray mode: how many worker actors")
    parser.add_argument("--address", default=None, help="Ray mode: the cluster (default: a local one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.ray:
        from training.jobs.ray_workers import run_on_ray

        run_on_ray(args.workers, address=args.address)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish nothing new; the lease hands the job on
    run_worker(once=args.once, stop=stop)


if __name__ == "__main__":
    main()
