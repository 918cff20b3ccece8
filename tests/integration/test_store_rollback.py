"""What a Redis failover does to a job, played on one engine: a checkpoint that waits out the
outage while the file keeps growing, and a COMPLETED record the promoted replica never got."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from chunkd.model.states import PartRecord, StreamState
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from chunkd.store import CheckpointStore
from tests.support.bucket import read_manifest, sha256_object
from tests.support.engine import run_in_thread, run_job
from tests.support.files import sha256_file, write_random
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB


class StallingStore:
    """The engine's store, whose first part checkpoint waits until the test lets it through: the
    job's wait for a store that is failing over."""

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store
        self.stalled = threading.Event()
        self.release = threading.Event()

    def record_part(self, stream_id: str, part: PartRecord, **kwargs: Any) -> None:
        if not self.stalled.is_set():
            self.stalled.set()
            assert self.release.wait(30), "the test never let the checkpoint through"
        self._store.record_part(stream_id, part, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("server", ["moto"], indirect=True)  # counts every UploadPart
def test_a_file_that_grew_while_a_checkpoint_waited_is_not_finalized_on_a_stale_look(
    make_engine: Callable[..., Engine], server: MotoServer
) -> None:
    engine = make_engine(idle_seconds=1)
    stalling = StallingStore(engine.store)
    engine.store = stalling  # type: ignore[assignment]
    path = engine.input_dir / "rec.ts"
    write_random(path, 6 * MiB)  # part 1 full, a tail begun
    thread, outcome = run_in_thread(engine, "rec.ts")
    assert stalling.stalled.wait(60), "part 1 was never checkpointed"
    with open(path, "ab") as handle:  # the recording goes on while the store is away
        handle.write(os.urandom(3 * MiB))
    time.sleep(1.5)  # the outage outlasts idle_seconds since the job's last look (not an assertion's wait)
    stalling.release.set()
    thread.join(60)
    assert outcome == [Outcome.COMPLETED]
    client = server.client()
    manifest = read_manifest(client, "rec.ts")
    assert manifest is not None and manifest["size"] == 9 * MiB
    assert sha256_object(client, "rec.ts") == sha256_file(path)
    sent = Counter(number for _, number in server.uploaded_parts(key="rec.ts", ok_only=True))
    assert sent == Counter({1: 1, 2: 1}), "a tail part went out on the look from before the outage"


def test_a_completed_record_the_failover_rolled_back_is_restored_not_uploaded_again(
    make_engine: Callable[..., Engine], client: Any
) -> None:
    engine = make_engine()
    path = write_random(engine.input_dir / "cam.mp4", 12 * MiB)
    assert run_job(engine, "cam.mp4") is Outcome.COMPLETED
    done = engine.store.find_by_relpath("cam.mp4")
    assert done is not None and done.upload_id is not None
    # The promoted replica holds the record as it was before its last saves: UPLOADING.
    engine.store.save_stream(replace(done, state=StreamState.UPLOADING, completed_at=None))
    engine.requests.clear()  # type: ignore[attr-defined]

    assert run_job(engine, "cam.mp4") is Outcome.COMPLETED
    sent = engine.requests  # type: ignore[attr-defined]
    assert sent["CreateMultipartUpload"] == 0 and sent["UploadPart"] == 0 and sent["PutObject"] == 0
    restored = engine.store.find_by_relpath("cam.mp4")
    assert restored is not None and restored.id == done.id and restored.state is StreamState.COMPLETED
    assert sha256_object(client, "cam.mp4") == sha256_file(path)
