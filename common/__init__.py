"""Bottom layer shared by every loraplex component: typed errors and settings helpers."""
