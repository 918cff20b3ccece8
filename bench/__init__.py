"""Benchmarks that put chunkd side by side with the tools users would otherwise pick.

Run from the repository root, e.g. `python -m bench.upload_compare --quick`.
"""
