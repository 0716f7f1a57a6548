"""Bottom layer shared by every loraplex component: typed errors, names, the PEFT adapter format and
adapter health, process helpers, the HTTP API client base."""
