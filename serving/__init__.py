"""The loraplex gateway: tenants' OpenAI-compatible API in front of one vLLM engine with hot-swapped LoRA adapters."""
