"""A file renamed while it is finalized: before the object is committed (CompleteMultipartUpload,
or the PutObject of a small file) the upload under the old name is aborted; once the commit is
sent, the upload stands under the old name. Either way the new name goes up under its own key.

The rename happens at a point the finalizer passes deterministically: while the media is checked
(after the file was read for its hashes), or as the commit request leaves.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunkd.model.states import StreamState
from chunkd.pipeline import mediagate
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from chunkd.pipeline.media import MediaInfo
from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.daemon import wait_for
from tests.support.engine import recorded_parts, run_in_thread, run_job
from tests.support.files import sha256_file, write_random
from tests.support.sizes import MiB

COMMITS = ("CompleteMultipartUpload", "PutObject")


def _keys(client: Any) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def _finalize_after_growth(
    engine: Engine, name: str, size: int, *, copy_of: Path | None = None
) -> tuple[threading.Thread, list[Outcome]]:
    """A job on a file (random bytes, or those of `copy_of`) whose whole parts the growth loop sends
    before it goes idle: at finalize nothing is left to send between reading it and the commit."""
    if copy_of is None:
        write_random(engine.input_dir / name, size)
    else:
        shutil.copyfile(copy_of, engine.input_dir / name)
    thread, outcome = run_in_thread(engine, name)
    full_parts = size // (5 * MiB)
    wait_for(lambda: len(recorded_parts(engine, name)) >= full_parts, timeout=30, what="every full part sent")
    return thread, outcome


@pytest.mark.parametrize(
    ("size", "dedup", "duplicate"),
    [(3 * MiB, "off", False), (10 * MiB, "off", False), (10 * MiB, "record", False), (10 * MiB, "copy", True)],
    ids=["single", "multipart", "multipart-dedup-candidate", "multipart-duplicate"],
)
def test_renamed_after_being_read_at_finalize_is_aborted_not_completed(
    make_engine: Callable[..., Engine], client: Any, monkeypatch: pytest.MonkeyPatch, size: int, dedup: str,
    duplicate: bool,
) -> None:
    """The file was read whole and found idle; it is renamed before the commit: no object under the
    old name, the multipart upload aborted, the record FAILED; the new name goes up on its own."""
    engine = make_engine(idle_seconds=2, dedup=dedup)
    earlier = write_random(engine.input_dir / "earlier.mp4", size)  # indexed content of the same size
    assert run_job(engine, "earlier.mp4") is Outcome.COMPLETED
    engine.requests.clear()  # type: ignore[attr-defined]
    renamed: list[Path] = []

    def probe_while_renamed(path: Path, **_: Any) -> MediaInfo | None:
        renamed.append(path.rename(path.with_name("new.mp4")))
        return None

    monkeypatch.setattr(mediagate, "probe", probe_while_renamed)
    thread, outcome = _finalize_after_growth(engine, "clip.mp4", size, copy_of=earlier if duplicate else None)
    thread.join(timeout=60)
    assert renamed and outcome == [Outcome.FAILED]
    record = engine.store.find_by_relpath("clip.mp4")
    assert record is not None and record.state is StreamState.FAILED
    assert record.last_error == "file deleted or renamed during upload"
    requests = engine.requests  # type: ignore[attr-defined]
    assert requests["CompleteMultipartUpload"] == 0 and requests["PutObject"] == 0 and requests["CopyObject"] == 0
    if size >= 5 * MiB:
        assert requests["AbortMultipartUpload"] == 1
        assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert _keys(client) == {"earlier.mp4", "earlier.mp4.manifest.json"}

    monkeypatch.undo()
    assert run_job(engine, "new.mp4") is Outcome.COMPLETED  # what the watcher does on the move event
    assert _keys(client) == {"earlier.mp4", "earlier.mp4.manifest.json", "new.mp4", "new.mp4.manifest.json"}
    assert sha256_object(client, "new.mp4") == sha256_file(renamed[0])


@pytest.mark.parametrize("size", [3 * MiB, 10 * MiB], ids=["single", "multipart"])
def test_renamed_once_the_commit_was_sent_is_completed_under_its_old_name(
    make_engine: Callable[..., Engine], client: Any, size: int
) -> None:
    """The commit request is on its way when the file is renamed: the object it makes is the file,
    so the upload stands (manifest, COMPLETED) and the new name is another file with its own key."""
    engine = make_engine(idle_seconds=2, dedup="off")
    count = engine.uploader._on_request  # type: ignore[attr-defined]
    renamed: list[Path] = []

    def rename_as_commit_leaves(op: str) -> None:
        count(op)
        if op in COMMITS and not renamed:
            renamed.append((engine.input_dir / "clip.mp4").rename(engine.input_dir / "new.mp4"))

    engine.uploader._on_request = rename_as_commit_leaves  # type: ignore[attr-defined]
    thread, outcome = _finalize_after_growth(engine, "clip.mp4", size)
    thread.join(timeout=60)
    assert renamed and outcome == [Outcome.COMPLETED]
    record = engine.store.find_by_relpath("clip.mp4")
    assert record is not None and record.state is StreamState.COMPLETED
    manifest = read_manifest(client, "clip.mp4")
    assert manifest is not None and manifest["source"]["relpath"] == "clip.mp4" and manifest["size"] == size
    assert sha256_object(client, "clip.mp4") == sha256_file(renamed[0])

    assert run_job(engine, "new.mp4") is Outcome.COMPLETED
    assert _keys(client) == {"clip.mp4", "clip.mp4.manifest.json", "new.mp4", "new.mp4.manifest.json"}
