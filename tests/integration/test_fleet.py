"""A fleet: many daemons, each with its own folder and CHUNKD_NODE, one Redis database, one bucket.

Real processes on real servers: `chunkd run` daemons, a redis-server, moto or `rclone serve s3`. The
same relpath on two boxes is two streams and two objects (`{node}/{relpath}`); `chunkd status`,
`chunkd nodes` give one view of them. The fleet test runs reduced by default (4 daemons x 5 files)
and at full size (20 x 50) with `-m slow`; it prints Redis commands per part and memory per stream.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunkd.model.states import StreamState
from chunkd.s3.devserver import LocalS3Server
from chunkd.store.redis import RedisStore
from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import sha256_file, write_random
from tests.support.fleet import (
    MANIFEST,
    FleetFigures,
    RedisMeter,
    drop_files,
    measure_idle,
    node_name,
    objects,
    start_fleet,
    wait_for_manifests,
)
from tests.support.s3_servers import MotoServer, make_client
from tests.support.sizes import MiB

FAST = {"idle_seconds": 1, "rescan_seconds": 60, "poll_seconds": 0.1, "part_size": "5MiB"}
SAME = "cam1/2026-12-04.mp4"


@pytest.fixture
def fleet(tmp_path: Path) -> Any:
    """start(server, redis_url, nodes, **settings) -> daemons; every daemon is killed after the test."""
    started: list[DaemonProcess] = []

    def start(server: Any, redis_url: str, nodes: int, **settings: Any) -> list[DaemonProcess]:
        daemons = start_fleet(server, redis_url, tmp_path, nodes, **{**FAST, **settings})
        started.extend(daemons)
        return daemons

    yield start
    for daemon in started:
        daemon.stop()


def test_one_relpath_recorded_on_two_nodes_is_two_objects_from_one_redis(
    fleet: Callable[..., list[DaemonProcess]], moto: MotoServer, redis_url: str, tmp_path: Path,
) -> None:
    daemons = fleet(moto, redis_url, 2, log_level="DEBUG")
    names = [node_name(0), node_name(1)]
    sources = {}
    for index, name in enumerate(names):
        folder = tmp_path / name / "input"
        (folder / "cam1").mkdir(parents=True, exist_ok=True)
        # Both recordings are still being written when the other box starts on its own.
        sources[name] = write_random(folder / SAME, (6 + index) * MiB)
    client = moto.client()
    manifests = {
        name: wait_for(lambda n=name: read_manifest(client, f"{n}/{SAME}"), timeout=120, what=f"{name}'s manifest")
        for name in names
    }
    for name in names:
        assert sha256_object(client, f"{name}/{SAME}") == sha256_file(sources[name])
        assert manifests[name]["source"]["node"] == name
        assert manifests[name]["source"]["relpath"] == SAME
    creates = Counter(r.key for r in moto.requests() if r.operation == "CreateMultipartUpload")
    assert creates == Counter({f"{name}/{SAME}": 1 for name in names}), "each object started exactly once"

    store = RedisStore.from_url(redis_url)
    try:
        streams = store.list_streams()
        assert sorted((r.node, r.relpath, r.state) for r in streams) == [
            (name, SAME, StreamState.COMPLETED) for name in names
        ], "one stream per (node, relpath), neither failed as 'replaced' by the other box's file"
        wait_for(lambda: len(store.list_nodes()) == 2, timeout=30, what="both heartbeats")
    finally:
        store.close()
    assert all(daemon.running for daemon in daemons)
    _check_the_one_view(daemons[0].env, names)


def _check_the_one_view(env: dict[str, str], names: list[str]) -> None:
    """`chunkd status` shows this node's, `--all-nodes` every node's with NODE; `chunkd nodes` both."""
    own = run_chunkd("status", "--json", env=env)
    assert own.returncode == 0, own.stderr
    assert [(row["node"], row["relpath"]) for row in json.loads(own.stdout)] == [(names[0], SAME)]
    every = run_chunkd("status", "--all-nodes", env=env)
    assert every.returncode == 0, every.stderr
    rows = [line.split() for line in every.stdout.splitlines()]
    assert rows[0][:4] == ["STATE", "ID", "NODE", "FILE"]
    assert sorted((row[0], row[2], row[3]) for row in rows[1:]) == [("COMPLETED", name, SAME) for name in names]
    other = run_chunkd("status", "--json", "--node", names[1], env=env)
    assert [row["node"] for row in json.loads(other.stdout)] == [names[1]]
    stranger = run_chunkd("status", "--node", "ops-laptop", env=env)
    assert stranger.stdout.strip() == (
        "no streams recorded yet for node ops-laptop (other nodes have some: chunkd status --all-nodes)"
    )
    nodes = run_chunkd("nodes", "--json", env=env)
    assert nodes.returncode == 0, nodes.stderr
    listed = json.loads(nodes.stdout)
    assert [info["node"] for info in listed] == names
    assert all(info["version"] and info["queue_depth"] == 0 for info in listed)
    stats = run_chunkd("stats", "--all-nodes", "--format", "json", env=env)
    assert json.loads(stats.stdout)[-1]["completed"] == 2


def run_fleet(
    fleet: Callable[..., list[DaemonProcess]], s3: LocalS3Server, redis_url: str, root: Path, *,
    nodes: int, files: int, big_every: int, timeout: float, idle_window: float,
) -> FleetFigures:
    """N daemons x M files: exactly one object per (node, file), byte-identical, manifests naming their
    node, one COMPLETED stream each; returns what Redis spent on them."""
    daemons = fleet(s3, redis_url, nodes, file_concurrency=2, part_concurrency=2, log_level="WARNING")
    meter = RedisMeter(redis_url)
    try:
        wait_for(lambda: len(_nodes(redis_url)) == nodes, timeout=120, what=f"{nodes} heartbeats")
        idle_rate = measure_idle(meter, idle_window)
        meter.mark()
        expected = drop_files(root, nodes, files, big_every=big_every)
        client = make_client(s3.endpoint_url, s3.access_key, s3.secret_key)
        keys = wait_for_manifests(client, BUCKET, nodes * files, timeout=timeout)
        commands, memory, seconds = meter.read()
        record_bytes = meter.stream_bytes()
    finally:
        meter.close()
    assert sorted(k for k in keys if not k.endswith(MANIFEST)) == sorted(f"{n}/{rel}" for n, rel in expected)
    parts = 0
    for (name, relpath), digest in expected.items():
        key = f"{name}/{relpath}"
        manifest = read_manifest(client, key)
        assert manifest is not None and manifest["source"]["node"] == name and manifest["sha256"] == digest
        assert sha256_object(client, key) == digest, f"{key} differs from {name}'s file"
        parts += len(manifest["parts"]) or 1
    _check_one_stream_each(redis_url, expected)
    assert all(daemon.running for daemon in daemons)
    assert objects(client, BUCKET) == keys, "nothing landed after the last manifest"
    return FleetFigures(nodes, files, parts, seconds, idle_rate, commands, memory, record_bytes, meter.by_command)


def _nodes(redis_url: str) -> list[dict[str, Any]]:
    store = RedisStore.from_url(redis_url)
    try:
        return store.list_nodes()
    finally:
        store.close()


def _check_one_stream_each(redis_url: str, expected: dict[tuple[str, str], str]) -> None:
    store = RedisStore.from_url(redis_url)
    try:
        streams = Counter((r.node, r.relpath, r.state) for r in store.list_streams())
    finally:
        store.close()
    assert streams == Counter({(n, rel, StreamState.COMPLETED): 1 for n, rel in expected})


def test_fleet_reduced_4_daemons_5_files_each(
    fleet: Callable[..., list[DaemonProcess]], rclone_s3: LocalS3Server, redis_url: str, tmp_path: Path,
) -> None:
    figures = run_fleet(fleet, rclone_s3, redis_url, tmp_path, nodes=4, files=5, big_every=5, timeout=120,
                        idle_window=3)
    print("\n".join(figures.lines()))


@pytest.fixture
def slow_only(request: pytest.FixtureRequest) -> None:
    """`slow` tests run only when a -m expression selected them (`-m slow`), never in the default run."""
    if not request.config.getoption("markexpr"):
        pytest.skip("full-size fleet test: run with `-m slow`")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fleet_full_20_daemons_50_files_each(
    slow_only: None, fleet: Callable[..., list[DaemonProcess]], rclone_s3: LocalS3Server, redis_url: str,
    tmp_path: Path,
) -> None:
    figures = run_fleet(fleet, rclone_s3, redis_url, tmp_path, nodes=20, files=50, big_every=5, timeout=3000,
                        idle_window=20)
    print("\n".join(figures.lines()))
