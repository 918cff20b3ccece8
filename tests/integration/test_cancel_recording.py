"""`chunkd cancel` is a decision about the file: a recording cancelled while it is still being
written is not uploaded again as it goes on growing, and `chunkd retry ID` brings it back. On Ceph
RGW: strict, and about 2 s to start."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from chunkd.model.states import StreamRecord, StreamState
from chunkd.store import open_store
from tests.support.bucket import open_uploads
from tests.support.ceph_rgw import CephRGW
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.media import record_mp4_slowly
from tests.support.s3_servers import make_client

RELPATH = "live.mp4"


def newest(state_url: str) -> StreamRecord | None:
    store = open_store(state_url)
    try:
        return store.find_by_relpath(RELPATH)
    finally:
        store.close()


def chunkd(daemon: DaemonProcess, *args: str) -> str:
    result = run_chunkd(*args, env=daemon.env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_recording_cancelled_while_it_grows_stays_cancelled_until_retried(
    rgw: CephRGW, input_dir: Path, chunkd_daemon: Callable[..., DaemonProcess]
) -> None:
    client = make_client(rgw.endpoint_url, rgw.access_key, rgw.secret_key)
    daemon = chunkd_daemon(rgw, part_size="5MiB", idle_seconds=2, rescan_seconds=1)
    state_url = daemon.env["CHUNKD_STATE_URL"]
    path = input_dir / RELPATH
    recorder = record_mp4_slowly(path, 120, heavy=True)
    try:
        uploading = wait_for(
            lambda: (r := newest(state_url)) is not None and r.upload_id is not None and r,
            timeout=60, what="a multipart upload of the recording",
        )
        assert "-> FAILED (cancelled by operator)" in chunkd(daemon, "cancel", uploading.id)
        time.sleep(10)  # the recording goes on after the cancel
    finally:
        recorder.send_signal(signal.SIGINT)  # ffmpeg finishes the file
        _, errors = recorder.communicate(timeout=30)
    assert recorder.returncode in (0, 255), errors
    final_size = path.stat().st_size

    def followed() -> StreamRecord | None:
        record = newest(state_url)
        assert record is not None and record.id == uploading.id, "the cancelled file became a new stream"
        return record if record.size == final_size else None

    # The daemon looked at the finished file (the cancelled record follows its size) and left it alone.
    record = wait_for(followed, timeout=60, what="the cancelled record to follow the finished file")
    assert (record.state, record.last_error) == (StreamState.FAILED, "cancelled by operator")
    assert client.list_objects_v2(Bucket="chunkd").get("KeyCount", 0) == 0
    assert open_uploads(client, RELPATH) == []

    chunkd(daemon, "retry", uploading.id)
    done = wait_for(
        lambda: (r := newest(state_url)) is not None and r.state is StreamState.COMPLETED and r,
        timeout=90, what="the retried recording to be uploaded",
    )
    assert done.id == uploading.id
    assert client.head_object(Bucket="chunkd", Key=RELPATH)["ContentLength"] == final_size
