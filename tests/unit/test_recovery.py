"""Records an emptied store forgot, restored from the manifests in the bucket (moto in-process)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chunkd.model.manifest import build_manifest, encode
from chunkd.model.node import Scope
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.pipeline.monitor import Snapshot
from chunkd.pipeline.partreader import FileIdentity
from chunkd.pipeline.recovery import restore_completed
from chunkd.s3.listing import FolderListings
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from chunkd.store.sqlite import SqliteStore
from tests.support.mocked_s3 import mocked_bucket

BUCKET = "videos"
KEY = "cam/clip.mp4"
MTIME_NS = 1_714_564_800_000_000_000


@pytest.fixture
def client() -> Iterator[Any]:
    with mocked_bucket(BUCKET) as s3:
        yield s3


@pytest.fixture
def engine(client: Any, tmp_path: Path) -> Iterator[Any]:
    store = SqliteStore(str(tmp_path / "state.db"))
    uploader = Uploader(client, RetryPolicy(max_attempts=1))
    settings = SimpleNamespace(
        bucket=BUCKET, manifest_suffix=".manifest.json", node_name="box-1", shared_input=False,
        scope=Scope("box-1", single_box=True),
    )
    yield SimpleNamespace(
        settings=settings, store=store, uploader=uploader, folders=FolderListings(uploader), endpoint="http://s3.test"
    )
    store.close()


def snapshot(size: int) -> Snapshot:
    return Snapshot(size, MTIME_NS, FileIdentity(1, 2))


def one_byte_parts(data: bytes) -> list[PartRecord]:
    return [
        PartRecord(i + 1, i, 1, f'"{hashlib.md5(data[i:i + 1]).hexdigest()}"', hashlib.sha256(data[i:i + 1]).hexdigest())
        for i in range(len(data))
    ]


def put(client: Any, data: bytes, records: list[PartRecord], **edit: Any) -> dict[str, Any]:
    """The object and its manifest, as chunkd writes them, with `edit` applied to the manifest."""
    record = StreamRecord(
        id="s-restored", relpath=KEY, source_path=f"/in/{KEY}", bucket=BUCKET, key=KEY,
        schedule={"base": 1, "fixed": True}, state=StreamState.COMPLETED, size=len(data),
        mtime=MTIME_NS / 1e9, sha256=hashlib.sha256(data).hexdigest(), origin={"url": "https://example.com/v"},
    )
    document = build_manifest(record, records, etag='"e-1"', hostname="h", completed_at=0.0, upload="multipart")
    document.update(edit)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=data)
    client.put_object(Bucket=BUCKET, Key=f"{KEY}.manifest.json", Body=encode(document))
    return document


def restore(engine: Any, size: int) -> StreamRecord | None:
    return restore_completed(engine, engine.store, KEY, KEY, Path(f"/in/{KEY}"), snapshot(size))


def test_a_manifest_restores_the_record_its_parts_and_the_content_index(client: Any, engine: Any) -> None:
    data = b"twelve bytes"
    put(client, data, one_byte_parts(data))

    record = restore(engine, len(data))

    assert record is not None and record.id == "s-restored" and record.state is StreamState.COMPLETED
    assert (record.bucket, record.key, record.size, record.origin) == (BUCKET, KEY, 12, {"url": "https://example.com/v"})
    assert engine.store.list_parts(record.id) == one_byte_parts(data)
    assert engine.store.find_by_content(hashlib.sha256(data).hexdigest()).id == record.id


def test_a_file_the_manifest_does_not_describe_is_not_restored(client: Any, engine: Any) -> None:
    data = b"twelve bytes"
    put(client, data, one_byte_parts(data))
    assert restore(engine, len(data) + 1) is None
    assert engine.store.find_by_relpath(KEY) is None


def test_a_manifest_with_a_malformed_part_restores_nothing(client: Any, engine: Any) -> None:
    """The parts used to be read only after the record was saved: a part without its sha256
    escaped as a KeyError and left a COMPLETED record without parts behind."""
    data = b"twelve bytes"
    parts = [part.to_dict() for part in one_byte_parts(data)]
    del parts[5]["sha256"]
    put(client, data, [], parts=parts)

    assert restore(engine, len(data)) is None
    assert engine.store.find_by_relpath(KEY) is None


def test_a_manifest_over_one_mib_is_read_whole(client: Any, engine: Any) -> None:
    """10,000 parts make a ~2 MB manifest; it used to be cut at 1 MiB and then fail to parse."""
    data = bytes(range(256)) * 32  # 8,192 one-byte parts
    put(client, data, one_byte_parts(data))
    raw = client.get_object(Bucket=BUCKET, Key=f"{KEY}.manifest.json")["Body"].read()
    assert len(raw) > 1 << 20

    record = restore(engine, len(data))

    assert record is not None
    assert len(engine.store.list_parts(record.id)) == len(data)


def test_a_manifest_without_a_bucket_restores_under_the_bucket_it_was_read_from(client: Any, engine: Any) -> None:
    data = b"twelve bytes"
    document = put(client, data, one_byte_parts(data))
    del document["bucket"]
    client.put_object(Bucket=BUCKET, Key=f"{KEY}.manifest.json", Body=json.dumps(document).encode())

    record = restore(engine, len(data))

    assert record is not None and record.bucket == BUCKET


def test_a_restored_record_names_the_poster_frame_its_manifest_names(client: Any, engine: Any) -> None:
    """The status page finds a completed file's poster through its record, restored ones too."""
    data = b"twelve bytes"
    put(client, data, one_byte_parts(data), thumbnail_key=f"{KEY}.thumb.jpg")

    record = restore(engine, len(data))

    assert record is not None and record.thumbnail_key == f"{KEY}.thumb.jpg"
    assert engine.store.find_by_relpath(KEY).thumbnail_key == f"{KEY}.thumb.jpg"
