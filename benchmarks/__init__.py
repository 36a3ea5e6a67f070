"""Benchmarks: each module compares ways of doing one job side by side in one run and prints a table of ratios.
Run them from the project root, e.g. `../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_sync`."""
