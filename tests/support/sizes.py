"""Byte sizes, defined once for every test: binary units for files and parts, MB for rates."""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000  # bandwidth settings ("40MB") are decimal, as in chunkd's own parser
