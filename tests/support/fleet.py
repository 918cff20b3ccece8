"""A fleet on one box: N `chunkd run` daemons, each with its own folder and CHUNKD_NODE, sharing one
Redis and one S3 server; and what their Redis costs (commands, memory), read from the server."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from chunkd.s3.traits import PROBE_NAME
from tests.support.daemon import DaemonProcess, daemon_env, wait_for
from tests.support.files import write_random
from tests.support.sizes import MiB

FLEET_TEMPLATE = "{node}/{relpath}"
MANIFEST = ".manifest.json"


def node_name(index: int) -> str:
    return f"rec-{index:02d}"


def start_fleet(server: Any, redis_url: str, root: Path, nodes: int, **settings: Any) -> list[DaemonProcess]:
    """`nodes` daemons on root/<node>/input, key template {node}/{relpath}, logs in root/<node>.log."""
    daemons = []
    for index in range(nodes):
        name = node_name(index)
        env = daemon_env(
            input_dir=root / name / "input", state_url=redis_url, endpoint_url=server.endpoint_url,
            access_key=server.access_key, secret_key=server.secret_key, node=name, key_template=FLEET_TEMPLATE,
            **settings,
        )
        daemons.append(DaemonProcess(env, root / f"{name}.log").start())
    return daemons


def drop_files(root: Path, nodes: int, files: int, *, big_every: int, seed: int = 18) -> dict[tuple[str, str], str]:
    """The same relpaths in every node's folder, different bytes: every `big_every`-th file 6 MiB (two
    parts of 5 MiB and 1 MiB), the others 20-200 KB (one PUT). Written aside, then renamed in, as a
    recorder closes a file. Returns {(node, relpath): sha256}."""
    rng = random.Random(seed)
    expected: dict[tuple[str, str], str] = {}
    for index in range(nodes):
        name = node_name(index)
        folder = root / name / "input"
        for number in range(files):
            relpath = f"cam{number % 3}/{number:03d}.mp4"
            size = 6 * MiB if number % big_every == 0 else rng.randint(20_000, 200_000)
            staged = write_random(root / name / f"staged-{number:03d}", size)
            (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
            expected[(name, relpath)] = _sha256(staged)
            os.replace(staged, folder / relpath)
    return expected


def objects(client: Any, bucket: str) -> list[str]:
    """Every key in the bucket except start-up probes."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return [key for key in keys if not key.rpartition("/")[2].startswith(PROBE_NAME)]


def wait_for_manifests(client: Any, bucket: str, count: int, *, timeout: float) -> list[str]:
    def done() -> list[str] | None:
        keys = objects(client, bucket)
        return keys if sum(key.endswith(MANIFEST) for key in keys) >= count else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"{count} manifests")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RedisMeter:
    """Commands and memory of one Redis, between `mark()` and `read()`: INFO commandstats and
    INFO memory, minus the meter's own INFO calls."""

    url: str
    client: redis.Redis = field(init=False)
    _memory: int = 0
    _at: float = 0.0
    _by_command: Counter[str] = field(default_factory=Counter)
    by_command: Counter[str] = field(default_factory=Counter)  # the last `read()`'s, per command

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.url, decode_responses=True)

    def _snapshot(self) -> tuple[Counter[str], int]:
        stats: dict[str, Any] = self.client.info("commandstats")
        calls = Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})
        del calls["info"]
        return calls, int(self.client.info("memory")["used_memory"])

    def mark(self) -> None:
        self._by_command, self._memory = self._snapshot()
        self._at = time.monotonic()

    def read(self) -> tuple[int, int, float]:
        """(commands, bytes of memory, seconds) since `mark()`."""
        calls, memory = self._snapshot()
        self.by_command = calls - self._by_command
        return self.by_command.total(), memory - self._memory, time.monotonic() - self._at

    def stream_bytes(self, prefix: str = "chunkd:") -> list[int]:
        """MEMORY USAGE of each stream's record and parts hashes, per stream."""
        sizes = []
        for key in self.client.scan_iter(f"{prefix}stream:*", count=1000):
            if key.endswith(":parts"):
                continue
            sizes.append(int(self.client.memory_usage(key) or 0) + int(self.client.memory_usage(f"{key}:parts") or 0))
        return sizes

    def close(self) -> None:
        self.client.close()


@dataclass
class FleetFigures:
    """What one run measured; `lines()` for the test's output and the README."""

    nodes: int
    files: int
    parts: int
    seconds: float
    idle_commands_per_second: float
    commands: int
    memory_delta: int
    record_bytes: list[int]
    by_command: Counter[str] = field(default_factory=Counter)

    @property
    def streams(self) -> int:
        return self.nodes * self.files

    @property
    def upload_commands(self) -> float:
        """Commands of the run less what the idle fleet would have sent in that time."""
        return max(0.0, self.commands - self.idle_commands_per_second * self.seconds)

    def lines(self) -> list[str]:
        mean_record = sum(self.record_bytes) / max(1, len(self.record_bytes))
        return [
            (f"fleet {self.nodes} daemons x {self.files} files = {self.streams} streams, {self.parts} parts, "
            f"{self.seconds:.1f} s"),
            f"idle: {self.idle_commands_per_second / self.nodes:.1f} Redis commands/s per daemon",
            (f"upload: {self.upload_commands / self.parts:.1f} commands per part "
            f"({self.upload_commands / self.streams:.1f} per file; all commands {self.commands})"),
            (f"memory: {self.memory_delta / self.streams:.0f} B of used_memory per completed stream "
            f"(record + parts hashes {mean_record:.0f} B; the rest indexes, event, fence)"),
            "commands: " + ", ".join(f"{name} {count}" for name, count in self.by_command.most_common(12)),
        ]


def measure_idle(meter: RedisMeter, seconds: float) -> float:
    meter.mark()
    time.sleep(seconds)  # a rate over a fixed window: nothing is asserted about what did not happen
    calls, _, elapsed = meter.read()
    return calls / elapsed


def parts_of(manifests: Callable[[], list[dict[str, Any]]]) -> int:
    return sum(len(manifest["parts"]) or 1 for manifest in manifests())
