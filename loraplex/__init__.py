"""loraplex: multi-tenant LoRA serving. This package holds the CLI and the embedded stack launcher."""
