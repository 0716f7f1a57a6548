"""A dedicated engine for separate-model mode: `python -m serving.dedicated_engine --model DIR --name NAME --port P`.

It serves one merged or fully fine-tuned model (no adapters) with the engine settings every other engine
uses (LORAPLEX_ENGINE_*, LORAPLEX_MAX_MODEL_LEN, ...: serving/engine_settings.py), in the foreground. A
start that fails stops at once with the engine's root cause and its log's path (exit 1). Route a tenant to
it with LORAPLEX_DEDICATED_ENGINES (docs/operations.md, "Separate-model mode").
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from common.errors import EngineUnavailable
from common.procs import stop_group
from serving.engine import start_engine, wait_engine_ready
from serving.settings import ServingSettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the model directory (Hugging Face, safetensors)")
    p.add_argument("--name", required=True, help="the model id tenants send (the NAME of LORAPLEX_DEDICATED_ENGINES)")
    p.add_argument("--port", type=int, required=True, help="loopback port of the engine")
    p.add_argument("--log", type=Path, help="the engine's log (default: engine-NAME.log here)")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for the engine to answer")
    args = p.parse_args(argv)
    settings = ServingSettings(base_model=args.model, base_name=args.name, engine_url=f"http://127.0.0.1:{args.port}")
    log = args.log or Path(f"engine-{args.name}.log")
    proc = start_engine(settings, args.port, log, lora=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # through `finally`: the engine's group goes too
    try:
        wait_engine_ready(settings.engine_url, args.ready_timeout, proc, log)
        print(f"ready: {args.name} at {settings.engine_url} (pid {proc.pid}, log {log})", flush=True)
        return proc.wait()
    except EngineUnavailable as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_group(proc.pid, 20)


if __name__ == "__main__":
    sys.exit(main())
