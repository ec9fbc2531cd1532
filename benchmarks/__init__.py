"""Ratio benchmarks, each measured within one run; `python -m benchmarks` prints one table."""
