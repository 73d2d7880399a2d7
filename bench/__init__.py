"""Benchmarks: each script measures its baseline in the same run and prints ratios (`python -m bench.NAME`)."""
