"""The fairness benchmarks' stack: SeaweedFS, one vLLM engine and the demo models, shared by every scenario.

`bench_stack` starts it and tears it down; a caller that runs several scenarios (`loraplex bench fairness`, a
combined latency program) opens it once and passes it to each. Gateways (one per admission setting, in
this process) are made over it by `gateway`.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest.fairness.gateways import BenchGateway, bench_gateway


@dataclass
class BenchStack:
    """A running engine behind S3, with the demo base and adapters.

    `engine`: the gateways' ServingSettings (base model, engine URL); `engine_pid`: the engine's process
    (its group: CPU accounting); `demo`: training.demo's artifacts; `tmp`: a scratch directory for gateways.
    """

    engine: object
    engine_pid: int
    s3_endpoint: str
    demo: object
    tmp: Path

    def gateway(self, name: str, admission: dict, inflight: int | None = None, max_queue: int = 4096,
                gc_freeze: bool = True, tenants: int | None = None) -> BenchGateway:
        """A gateway with `admission` settings on a fresh bucket, with tenants registered: the demo tenants,
        or `tenants` of them (the demo adapters reused in turn; each tenant its own copy in its namespace).
        `inflight`: its LORAPLEX_MAX_INFLIGHT (None: the default)."""
        from serving.settings import ServingSettings
        from training.demo import DEMO_TENANTS

        inflight = inflight if inflight is not None else ServingSettings.model_fields["max_inflight"].default
        bg = bench_gateway(self.engine, self.s3_endpoint, self.demo.base_dir, self.tmp / name, admission,
                           inflight, max_queue, gc_freeze)
        specs = DEMO_TENANTS if tenants is None else [
            dict(DEMO_TENANTS[i % len(DEMO_TENANTS)], tenant=f"t{i}") for i in range(tenants)]
        bg.add_tenants(specs, self.demo.adapter_dirs)
        return bg


@contextlib.contextmanager
def bench_stack(var_dir: Path = Path("var"), console=None):
    """SeaweedFS and one vLLM engine over the demo base (built if missing); yields a `BenchStack`."""
    from common.procs import free_port, stop_group
    from loadtest.harness import running_s3
    from serving.engine import start_engine, wait_engine_ready
    from serving.settings import ServingSettings
    from training.demo import build_demo

    demo = build_demo(var_dir)
    tmp = Path(tempfile.mkdtemp(prefix="lpx-fair-"))
    with contextlib.ExitStack() as stack:  # unwinds: the engine, SeaweedFS
        s3 = stack.enter_context(running_s3(tmp / "s3", key_prefix="bench"))
        port = free_port()
        engine = ServingSettings(base_model=demo.base_dir, engine_url=f"http://127.0.0.1:{port}")
        proc = start_engine(engine, port, tmp / "engine.log")
        stack.callback(stop_group, proc.pid)
        if console is not None:
            console.print("starting the vLLM engine …")
        wait_engine_ready(engine.engine_url, 600, proc)
        yield BenchStack(engine, proc.pid, s3.endpoint, demo, tmp)
