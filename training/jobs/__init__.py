"""Fine-tuning job workers: claim jobs from the registry, train with training/sft.py, publish the adapter."""
