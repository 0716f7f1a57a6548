"""Load tests and benchmarks: traffic drivers over the public HTTP API, and the benchmark programs."""
