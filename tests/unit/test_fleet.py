"""A fleet's pieces that need no server: node names, `{node}` in keys, which records a node's folder
holds, `chunkd status --all-nodes`, `chunkd nodes` and `/status?node=`."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from chunkd.config import Settings, load_settings
from chunkd.errors import ConfigError
from chunkd.model.keys import render_key
from chunkd.model.node import Scope, default_node, validate_node
from chunkd.model.states import StreamRecord, StreamState
from chunkd.observe.heartbeat import Heartbeat, render_nodes
from chunkd.observe.http import Check, HttpServer
from chunkd.observe.metrics import Metrics
from chunkd.observe.overview import StreamStatus, render_table


def record(stream_id: str, relpath: str = "cam1/a.mp4", **fields: Any) -> StreamRecord:
    return StreamRecord(id=stream_id, relpath=relpath, source_path=f"/in/{relpath}", bucket="b", key=relpath,
                        schedule={}, **fields)


@pytest.mark.parametrize("name", ["box-7", "rec01.site.example", "A_1", "9"])
def test_valid_node_names(name: str) -> None:
    assert validate_node(name) == name
    assert load_settings(env={"CHUNKD_NODE": name}).node_name == name


@pytest.mark.parametrize("name", ["a/b", "-box", ".box", "box one", "box:1", "ü", "x" * 64, "tab\there"])
def test_invalid_node_names_are_refused_naming_the_setting(name: str) -> None:
    with pytest.raises(ConfigError, match="CHUNKD_NODE"):
        load_settings(env={"CHUNKD_NODE": name})


def test_node_defaults_to_the_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "rec-42")
    assert Settings().node_name == "rec-42" == default_node()
    assert load_settings(env={"CHUNKD_NODE": ""}).node_name == "rec-42"
    monkeypatch.setattr("socket.gethostname", lambda: "odd host/name")
    assert validate_node(default_node()) == "odd-host-name"


def test_node_in_a_key_template() -> None:
    assert render_key("{node}/{relpath}", "cam1/a.mp4", node="rec-1", hostname="h") == "rec-1/cam1/a.mp4"
    assert render_key("{hostname}/{relpath}", "a.mp4", node="rec-1", hostname="h") == "h/a.mp4"
    load_settings(env={"CHUNKD_KEY_TEMPLATE": "{node}/{date}/{relpath}"})  # a valid template


def test_a_local_folder_holds_its_own_nodes_records_and_those_from_before_nodes() -> None:
    scope = Scope("rec-1")
    assert scope.holds(record("a", node="rec-1"))
    assert scope.holds(record("b"))  # written before nodes were recorded: this box's, as it was
    assert not scope.holds(record("c", node="rec-2"))
    assert not scope.holds(record("d", node="rec-1", shared=True))


def test_a_shared_folder_holds_shared_records_of_every_node() -> None:
    scope = Scope.of("rec-1", shared_input=True)
    assert scope.node is None
    assert scope.holds(record("a", node="rec-2", shared=True))
    assert scope.holds(record("b"))
    assert not scope.holds(record("c", node="rec-2"))


def test_leases_are_per_node_for_a_local_folder_and_per_relpath_for_a_shared_one() -> None:
    assert Scope("rec-1").lease_name("cam1/a.mp4") != Scope("rec-2").lease_name("cam1/a.mp4")
    assert Scope(None).lease_name("cam1/a.mp4") == "cam1/a.mp4"
    # SQLite's leases are one daemon's: unchanged names, and its records are all this box's.
    single = Scope.of("rec-1", shared_input=False, single_box=True)
    assert single.lease_name("cam1/a.mp4") == "cam1/a.mp4"
    assert single.holds(record("x", node="old-container-name"))
    assert load_settings(env={"CHUNKD_STATE_URL": "sqlite:///s.db"}).scope.single_box
    assert not load_settings(env={"CHUNKD_STATE_URL": "redis://r:6379/0"}).scope.single_box


def test_a_scope_of_a_record_is_the_one_it_was_written_in() -> None:
    assert Scope.of_record(record("a", node="rec-1")) == Scope("rec-1")
    assert Scope.of_record(record("b", node="rec-1", shared=True)) == Scope(None)
    assert Scope.of_record(record("c")) == Scope(None)


def test_records_without_a_node_load_and_new_ones_keep_it() -> None:
    old = record("a").to_dict()
    del old["node"], old["shared"]
    loaded = StreamRecord.from_dict(old)
    assert (loaded.node, loaded.shared) == (None, False)
    assert StreamRecord.from_dict(record("b", node="rec-1").to_dict()).node == "rec-1"


def test_status_all_nodes_has_a_node_column() -> None:
    statuses = [
        StreamStatus(record("a1b2", node="rec-1", state=StreamState.COMPLETED, size=10), 10, 0),
        StreamStatus(record("c3d4", node="rec-2", state=StreamState.COMPLETED, size=10), 10, 0),
        StreamStatus(record("e5f6", state=StreamState.PENDING), 0, 0),
    ]
    lines = render_table(statuses, nodes=True).splitlines()
    assert lines[0].split()[:4] == ["STATE", "ID", "NODE", "FILE"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["COMPLETED", "a1b2", "rec-1", "cam1/a.mp4"],
        ["COMPLETED", "c3d4", "rec-2", "cam1/a.mp4"],
        ["PENDING", "e5f6", "-", "cam1/a.mp4"],
    ]
    assert "NODE" not in render_table(statuses)


class _Registry:
    def __init__(self) -> None:
        self.beats: list[tuple[str, dict[str, Any], float]] = []

    def beat(self, node: str, info: dict[str, Any], *, ttl: float) -> None:
        self.beats.append((node, info, ttl))

    def list_nodes(self) -> list[dict[str, Any]]:
        return []


def test_heartbeat_beats_when_due_with_queue_depth_and_last_error() -> None:
    now = [100.0]
    registry = _Registry()
    beat = Heartbeat(registry, "rec-1", queue_depth=lambda: 3, every=10, ttl=120, clock=lambda: now[0])
    beat.tick()
    now[0] += 5
    beat.tick()
    assert len(registry.beats) == 1
    beat.error("cam1/a.mp4: upload failed https://user:secret@host/x")
    now[0] += 5
    beat.tick()
    assert len(registry.beats) == 2
    node, info, ttl = registry.beats[-1]
    assert (node, ttl, info["queue_depth"]) == ("rec-1", 120, 3)
    assert "cam1/a.mp4" in info["last_error"] and "secret" not in info["last_error"]
    assert {"version", "started_at", "pid", "host"} <= set(info)


def test_nodes_table() -> None:
    nodes = [
        {"node": "rec-1", "version": "1.2", "started_at": 1000.0, "seen_at": 4595.0, "queue_depth": 4,
         "last_error": None},
        {"node": "rec-2", "version": "1.2", "started_at": 4000.0, "seen_at": 4598.0, "queue_depth": 0,
         "last_error": "cam1/b.mp4: disk"},
    ]
    lines = render_nodes(nodes, now=4600.0).splitlines()
    assert lines[0].split() == ["NODE", "VERSION", "UP", "QUEUE", "SEEN", "LAST", "ERROR"]
    assert lines[1].split() == ["rec-1", "1.2", "1h00m", "4", "5s", "ago", "-"]
    assert lines[2].split()[:5] == ["rec-2", "1.2", "10m00s", "0", "2s"]
    assert lines[2].endswith("cam1/b.mp4: disk")
    assert render_nodes([]) == "no daemon seen in the last few minutes"


def test_http_status_of_one_node_or_every_node() -> None:
    asked: list[str | None] = []

    def fleet(node: str | None, *, limit: int | None = None) -> list[dict[str, Any]]:
        asked.append(node)
        return [{"node": node or "all"}]

    server = HttpServer("127.0.0.1:0", token=None, metrics=Metrics(), health=lambda: Check(True, {}),
                        ready=lambda: Check(True, {}), status=lambda limit=None: [{"node": "mine"}], fleet_status=fleet,
                        poll_interval=0.05)
    server.start()
    try:
        base = "http://{}:{}/status".format(*server.address)

        def get(query: str) -> Any:
            with urllib.request.urlopen(base + query, timeout=5) as reply:
                return json.loads(reply.read())

        assert get("") == [{"node": "mine"}]
        assert get("?node=rec-2") == [{"node": "rec-2"}]
        assert get("?all_nodes=1") == [{"node": "all"}]
        assert asked == ["rec-2", None]
    finally:
        server.stop()


def test_events_and_webhooks_carry_the_node() -> None:
    from chunkd.observe.events import build_event

    event = build_event("completed", record("a1", node="rec-3", state=StreamState.COMPLETED), ts=1.0)
    assert event["node"] == "rec-3"


def test_a_manifest_names_its_node_and_reads_back_without_it_in_origin() -> None:
    from chunkd.model.manifest import build_manifest, encode, parse_manifest

    done = record("a1", node="rec-3", state=StreamState.COMPLETED, size=0, sha256="0" * 64)
    document = build_manifest(done, [], etag='"e"', hostname="h", completed_at=2.0, upload="single")
    assert document["source"]["node"] == "rec-3"
    source = parse_manifest(encode(document)).source
    assert (source.node, source.origin) == ("rec-3", {})
