"""Benchmarks, run from a checkout: `python -m bench.<name>`. Not installed with the package."""
