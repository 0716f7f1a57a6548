"""The embedded stack on one host: SeaweedFS (S3) and the gateway as detached processes; the gateway
starts the vLLM engine and restarts it if it dies.

`up` returns only when the gateway's /ready answers 200 and var/stack.json is written; `down` stops
every process it started, by the pids it recorded, process group and all.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape

from common.procs import free_port, pid_alive, port_open, spawn, stop_group
from loadtest.harness import start_s3
from loraplex.settings import StackSettings
from registry.seaweed import GRPC_OFFSET, SeaweedServer
from serving.engine_log import EngineLog

console = Console(stderr=True)
SERVICES = ("worker", "gateway", "engine", "seaweed")  # stopped in this order


class StartupFailed(RuntimeError):
    """A process of the stack failed to start; the message names the root cause and the log to read."""


def load_secrets(cfg: StackSettings) -> dict:
    """Admin key and S3 credentials of this stack, generated once and kept 0600 under var/."""
    if cfg.secrets_file.exists():
        return json.loads(cfg.secrets_file.read_text())
    chosen = cfg.admin_key.get_secret_value() if cfg.admin_key else None  # LORAPLEX_ADMIN_KEY
    data = {"admin_key": chosen or "lpx_admin_" + secrets.token_urlsafe(24),
            "s3_access_key": "lpx" + secrets.token_hex(8), "s3_secret_key": secrets.token_urlsafe(30)}
    cfg.var_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cfg.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return data


def pids(cfg: StackSettings) -> dict[str, int]:
    out = {}
    for name in SERVICES:
        f = cfg.run_dir / f"{name}.pid"
        if f.exists():
            out[name] = int(f.read_text())
    return out


def _record(cfg: StackSettings, name: str, pid: int) -> None:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / f"{name}.pid").write_text(str(pid))


def _pick_port(preferred: int, taken: tuple[int, ...] = ()) -> int:
    return preferred if preferred and preferred not in taken and not port_open(preferred) else free_port()


def base_model_dir(cfg: StackSettings) -> Path:
    if cfg.base_model:
        return cfg.base_model
    from training.demo import build_demo  # only the demo path needs training's dependencies

    return build_demo(cfg.var_dir).base_dir


def up(cfg: StackSettings | None = None, ray: bool = False) -> dict:
    """Start whatever is not running, wait for /ready, write and return var/stack.json.

    `ray`: serve through Ray Serve on a local cluster (serving/ray_app.py) instead of one engine.
    """
    cfg = cfg or StackSettings()
    running = {n: p for n, p in pids(cfg).items() if pid_alive(p)}
    if set(running) == set(SERVICES) and cfg.stack_file.exists():
        info = json.loads(cfg.stack_file.read_text())
        _wait_ready(info["gateway_url"], cfg.ready_timeout_s)
        console.print(f"[green]already running[/] at {info['gateway_url']}")
        return info
    down(cfg, quiet=True)  # a partial stack: start clean
    keys = load_secrets(cfg)
    base = base_model_dir(cfg).resolve()
    aws = {"AWS_ACCESS_KEY_ID": keys["s3_access_key"], "AWS_SECRET_ACCESS_KEY": keys["s3_secret_key"]}
    os.environ.update(aws)  # this process creates the bucket; the children inherit the same keys
    try:
        info = _start_all(cfg, keys, base, aws) if not ray else _start_all_ray(cfg, keys, base, aws)
    except StartupFailed as e:
        console.print(f"[red]start-up failed[/]: {escape(str(e))}\nlogs are in {cfg.log_dir}/")
        down(cfg, quiet=True)
        raise
    except BaseException:
        console.print(f"[red]start-up failed[/]; logs are in {cfg.log_dir}/")
        down(cfg, quiet=True)
        raise
    _start_worker(cfg, info, base, aws)
    _write_stack(cfg, info)
    console.print(f"[green]ready[/]: gateway {info['gateway_url']}  (stack file {cfg.stack_file})")
    return info


def _start_worker(cfg: StackSettings, info: dict, base: Path, aws: dict) -> None:
    """One fine-tuning job worker (CPU) beside the gateway, on the same bucket (docs/fine-tuning.md)."""
    env = {**os.environ, **aws, "LORAPLEX_S3_ENDPOINT": info["s3_endpoint"], "LORAPLEX_S3_BUCKET": cfg.s3_bucket,
           "LORAPLEX_BASE_MODEL": str(base), "LORAPLEX_JOB_WORK_DIR": str((cfg.var_dir / "jobs").resolve())}
    worker = spawn([sys.executable, "-m", "training.jobs"], log=cfg.log_dir / "worker.log", env=env)
    _record(cfg, "worker", worker.pid)
    console.print(f"started a fine-tuning job worker (pid {worker.pid}, log {cfg.log_dir / 'worker.log'})")


def _start_seaweed(cfg: StackSettings, aws: dict) -> SeaweedServer:
    """Start SeaweedFS with the ports it had last time where they are free (its volumes remember them)."""
    ports_file = cfg.var_dir / "s3-ports.json"
    old = json.loads(ports_file.read_text()) if ports_file.exists() else {"s3": cfg.s3_port}
    # each gRPC port is HTTP + 10000 in SeaweedFS: a port above 55535 cannot be used
    wanted = {f"{k}_port": p for k, p in old.items()
              if p + GRPC_OFFSET <= 65535 and not port_open(p) and not port_open(p + GRPC_OFFSET)}
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    console.print("starting SeaweedFS …")
    weed = start_s3(cfg.var_dir / "s3", access_key=aws["AWS_ACCESS_KEY_ID"], secret_key=aws["AWS_SECRET_ACCESS_KEY"],
                    log_path=cfg.log_dir / "seaweed.log", buckets=(cfg.s3_bucket,),
                    on_started=lambda server: _record(cfg, "seaweed", server.pid), **wanted)
    ports_file.write_text(json.dumps(weed.ports))
    return weed


def _start_all(cfg: StackSettings, keys: dict, base: Path, aws: dict) -> dict:
    weed = _start_seaweed(cfg, aws)
    engine_port = _pick_port(cfg.engine_port)
    engine_url = f"http://127.0.0.1:{engine_port}"
    if port_open(cfg.gateway_port):
        raise RuntimeError(f"port {cfg.gateway_port} is taken: stop what uses it or set LORAPLEX_GATEWAY_PORT")
    admin_port = _pick_port(cfg.admin_port, taken=(cfg.gateway_port, engine_port))
    console.print(f"starting the gateway on 127.0.0.1:{cfg.gateway_port} (operators: 127.0.0.1:{admin_port}); it "
                  f"starts and supervises the vLLM engine on 127.0.0.1:{engine_port} (about a minute on CPU) …")
    engine_log = EngineLog.at_end((cfg.log_dir / "engine.log").resolve())  # this start's part of the log
    env = {**os.environ, **aws, "LORAPLEX_S3_ENDPOINT": weed.endpoint, "LORAPLEX_S3_BUCKET": cfg.s3_bucket,
           "LORAPLEX_BASE_MODEL": str(base), "LORAPLEX_ENGINE_URL": engine_url,
           "LORAPLEX_ENGINE_MANAGED": "true", "LORAPLEX_ENGINE_LOG": str(engine_log.path),
           "LORAPLEX_ENGINE_PID_FILE": str((cfg.run_dir / "engine.pid").resolve()),
           "LORAPLEX_ADMIN_KEY": keys["admin_key"], "LORAPLEX_GATEWAY_PORT": str(cfg.gateway_port),
           "LORAPLEX_ADMIN_PORT": str(admin_port),
           "LORAPLEX_CACHE_DIR": str((cfg.var_dir / "cache" / "adapters").resolve())}
    gateway_log = EngineLog.at_end(cfg.log_dir / "gateway.log")
    gw = spawn([sys.executable, "-m", "serving"], log=gateway_log.path, env=env)
    _record(cfg, "gateway", gw.pid)
    gateway_url = f"http://127.0.0.1:{cfg.gateway_port}"
    _wait_ready(gateway_url, cfg.ready_timeout_s, procs={"gateway": (gw, gateway_log)}, engine_log=engine_log)
    return {"gateway_url": gateway_url, "engine_url": engine_url, "admin_url": f"http://127.0.0.1:{admin_port}",
            "admin_key": keys["admin_key"],
            "s3_endpoint": weed.endpoint, "bucket": cfg.s3_bucket, "base_model": _shown(base),
            "tenants": _previous_tenants(cfg)}


def _start_all_ray(cfg: StackSettings, keys: dict, base: Path, aws: dict) -> dict:
    """Ray mode: one driver process runs a local Ray cluster with Serve (HTTP on the gateway port), the
    gateway as its ingress and LORAPLEX_RAY_ENGINE_REPLICAS engine replicas. It is recorded as both the
    gateway and the engine: stopping it stops the cluster, and every replica's engine with it."""
    weed = _start_seaweed(cfg, aws)
    if port_open(cfg.gateway_port):
        raise RuntimeError(f"port {cfg.gateway_port} is taken: stop what uses it or set LORAPLEX_GATEWAY_PORT")
    info_file = (cfg.run_dir / "ray.json").resolve()
    info_file.unlink(missing_ok=True)
    admin_port = _pick_port(cfg.admin_port, taken=(cfg.gateway_port,))  # the ingress replica's operator plane
    console.print(f"starting Ray Serve on 127.0.0.1:{cfg.gateway_port}: the gateway as ingress and the engine "
                  "replicas, each with its own vLLM engine (a few minutes on CPU) …")
    env = {**os.environ, **aws, "LORAPLEX_S3_ENDPOINT": weed.endpoint, "LORAPLEX_S3_BUCKET": cfg.s3_bucket,
           "LORAPLEX_BASE_MODEL": str(base), "LORAPLEX_ADMIN_KEY": keys["admin_key"],
           "LORAPLEX_GATEWAY_PORT": str(cfg.gateway_port), "LORAPLEX_RAY_INFO_FILE": str(info_file),
           "LORAPLEX_ADMIN_PORT": str(admin_port),
           "LORAPLEX_RAY_LOG_DIR": str(cfg.log_dir.resolve()),
           "LORAPLEX_CACHE_DIR": str((cfg.var_dir / "cache" / "adapters").resolve())}
    driver_log = EngineLog.at_end(cfg.log_dir / "gateway.log")
    driver = spawn([sys.executable, "-m", "serving.ray_app"], log=driver_log.path, env=env)
    _record(cfg, "gateway", driver.pid)
    _record(cfg, "engine", driver.pid)
    gateway_url = f"http://127.0.0.1:{cfg.gateway_port}"
    _wait_ready(gateway_url, cfg.ready_timeout_s + 300, procs={"Ray Serve driver": (driver, driver_log)})
    deadline = time.monotonic() + 60
    while not info_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    replicas = json.loads(info_file.read_text())["replicas"] if info_file.exists() else {}
    engine_url = next(iter(replicas.values()))["engine_url"] if replicas else ""  # one replica's engine
    return {"gateway_url": gateway_url, "engine_url": engine_url, "admin_url": f"http://127.0.0.1:{admin_port}",
            "admin_key": keys["admin_key"],
            "s3_endpoint": weed.endpoint, "bucket": cfg.s3_bucket, "base_model": _shown(base),
            "tenants": _previous_tenants(cfg)}


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _previous_tenants(cfg: StackSettings) -> dict:
    try:
        return json.loads(cfg.stack_file.read_text()).get("tenants", {})
    except (OSError, ValueError):
        return {}


def _write_stack(cfg: StackSettings, info: dict) -> None:
    tmp = cfg.stack_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds keys
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    tmp.replace(cfg.stack_file)


def update_tenants(cfg: StackSettings, tenants: dict) -> dict:
    info = json.loads(cfg.stack_file.read_text())
    info["tenants"] = tenants
    _write_stack(cfg, info)
    return info


def _wait_ready(url: str, timeout: float, procs: dict | None = None, engine_log: EngineLog | None = None) -> None:
    """Wait for the gateway's /ready; stop at once, with the root cause, when a process in `procs` (name ->
    Popen, or (Popen, its EngineLog) to name the cause) exits, the gateway reports that its engine failed to
    start, or the engine's log says so."""
    deadline = time.monotonic() + timeout
    with console.status("waiting for the gateway's /ready (engine generate + S3) …"):
        while time.monotonic() < deadline:
            for name, watched in (procs or {}).items():
                p, plog = watched if isinstance(watched, tuple) else (watched, None)
                if p.poll() is not None:
                    raise StartupFailed(plog.failure(p.returncode, process=name) if plog else
                                        f"the {name} exited with code {p.returncode} while starting")
            if engine_log is not None and engine_log.fatal():
                raise StartupFailed(engine_log.failure())
            try:
                r = httpx.get(f"{url}/ready", timeout=15)
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 200:
                return
            if r is not None and _start_failed(r):
                raise StartupFailed(r.json()["engine"])
            time.sleep(1)
    raise StartupFailed(f"{url}/ready did not answer 200 within {timeout:.0f}s"
                        + (f"; the engine's log: {engine_log.path}" if engine_log else ""))


def _start_failed(r: httpx.Response) -> bool:
    """Whether a 503 from /ready says that the engine failed to start (serving/supervisor.py's ready_detail)."""
    try:
        return r.json().get("engine_start_failed") is True
    except ValueError:
        return False


def down(cfg: StackSettings | None = None, quiet: bool = False) -> None:
    """Stop every process `up` started (gateway first, so it stops admitting before the engine goes)."""
    cfg = cfg or StackSettings()
    for name, pid in pids(cfg).items():
        if pid_alive(pid):
            if not quiet:
                console.print(f"stopping {name} (pid {pid})")
            stop_group(pid)
        (cfg.run_dir / f"{name}.pid").unlink(missing_ok=True)
    if not quiet:
        console.print("[green]stopped[/]")


def status(cfg: StackSettings | None = None) -> dict:
    cfg = cfg or StackSettings()
    procs = {name: {"pid": pid, "alive": pid_alive(pid)} for name, pid in pids(cfg).items()}
    out = {"processes": procs, "ready": False}
    if cfg.stack_file.exists():
        info = json.loads(cfg.stack_file.read_text())
        out["gateway_url"] = info["gateway_url"]
        if "admin_url" in info:
            out["admin_url"] = info["admin_url"]
        try:
            r = httpx.get(f"{info['gateway_url']}/ready", timeout=15)
            out["ready"], out["detail"] = r.status_code == 200, r.json()
        except httpx.HTTPError as e:
            out["detail"] = f"unreachable: {type(e).__name__}"
    return out
