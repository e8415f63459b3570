"""Benchmarks of the regionlock core and service; results in RESULTS.md."""
