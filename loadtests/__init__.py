"""Load tests (locust) and the benchmark (raw model vs the served pipeline); see docs/benchmark.md."""
