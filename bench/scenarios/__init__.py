"""The six scenarios, in the order they run; each `run(ctx, endpoint) -> ScenarioResult`."""

from __future__ import annotations

from types import ModuleType

from bench.scenarios import ceiling, growing, memory, resume, small_files, throughput

SCENARIOS: dict[str, ModuleType] = {
    module.NAME: module for module in (throughput, memory, resume, growing, small_files, ceiling)
}

# Which servers each scenario runs on unless --server says otherwise. Throughput (and its
# ceiling) is where the server matters most, so it runs on both. Memory, resume and growing
# measure the client (its RSS, what it re-sends, how closely it follows a writer), not the
# server, and moto would hold every multi-GiB object in its own memory on a shared machine.
# Small files on moto (one Python process answering 5,000 PUTs per tool) would add the longest
# stretch of the run to measure mostly moto: `--server both --scenario small_files` does it.
# Ceph RGW, the strict production server, runs every scenario on request (`--server rgw` or
# `all`), not by default: each run adds its cluster's start-up and a garbage collection per upload.
DEFAULT_SERVERS: dict[str, tuple[str, ...]] = {
    "throughput": ("rclone", "moto"),
    "memory": ("rclone",),
    "resume": ("rclone",),
    "growing": ("rclone",),
    "small_files": ("rclone",),
    "ceiling": ("rclone", "moto"),
}

