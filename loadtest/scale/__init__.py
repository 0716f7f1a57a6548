"""`loraplex bench scale`: one engine serving 8 to 1,000 adapters of a hundred tenants (see bench.py)."""
