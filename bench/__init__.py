"""Benchmark harness: `python -m bench meta_epoch|meta_test ...` (see BENCHMARKS.md)."""
