"""Benchmarks that put chunkd side by side with the tools users would otherwise pick.

Run from the repository root: `python -m bench --quick` (smoke run), `python -m bench` (full run,
results in bench/results/). `python -m bench.chaos` is the kill -9 campaign.
"""
