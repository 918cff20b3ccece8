"""Byte sizes, defined once for the benchmark (it does not import the test suite's)."""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000  # rates are reported in MB/s, 10^6 bytes
