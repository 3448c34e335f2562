"""Benchmarks: `python -m benchmarks [scenario ...]` (see __main__.py); each scenario is a module with run(opts)."""
