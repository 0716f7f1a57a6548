"""What the plugin did inside an engine's worker, read through `LLM.collective_rpc` (tests, benchmark).

vLLM runs each function here in the worker process with the worker as first argument. Sending a
function needs `VLLM_ALLOW_INSECURE_SERIALIZATION=1` in the engine's environment: set it only in
test and benchmark processes, never in a served engine.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def worker_report(worker: Any = None) -> dict:
    """The worker's pid, whether the plugin's wrapper is installed, its torch threads and call counts, and
    the cap of the queue-wait backoff (None: vLLM's spin), whether registered adapters are found in O(1)."""
    from serving.vllm_plugin import adapter_lookup, rows_kernel, slot_log, spin, threads, wrapper
    from serving.vllm_plugin.registration import is_installed

    return {"pid": os.getpid(), "installed": is_installed(), "threads": torch.get_num_threads(),
            "calls": dict(wrapper.CALLS) | dict(rows_kernel.RUNS), "plugin_ops": wrapper._PLUGIN_OPS["on"],
            "spin_cap_s": spin.installed_cap_s(), "lora_threads": threads.limit(),
            "adapter_lookup": adapter_lookup.installed(), "slot_writes": slot_log.LOG.gen}


def set_worker_ops(worker: Any, plugin: bool) -> dict:
    """Select the plugin's ops (True) or vLLM's stock ops (False) in the worker; returns its report."""
    from serving.vllm_plugin import wrapper

    wrapper.set_plugin_ops(plugin)
    return worker_report(worker)
