"""CHUNKD_PRESIGN_SECONDS: a completed event carries a presigned GET URL that the server honours
(moto, and Ceph RGW, which checks the query signature), and the daemon's log never shows it."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunkd.store import open_store
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import drop, write_random
from tests.support.sizes import MiB


@pytest.fixture(params=["moto", "rgw"])
def s3(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def _completed_urls(state_url: str) -> list[str]:
    store = open_store(state_url)
    try:
        return [str(event["url"]) for event in store.list_events() if event["event"] == "completed"]
    finally:
        store.close()


def test_completed_event_carries_a_working_presigned_url(
    s3: Any, chunkd_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path,
) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    (input_dir / "dir").mkdir()
    source = drop(write_random(tmp_path / "clip.mp4", 1 * MiB), input_dir, "dir/clip.mp4")
    daemon = chunkd_daemon(s3, state_url=state_url, presign_seconds=300)
    (url,) = wait_for(lambda: _completed_urls(state_url), timeout=60, what="a completed event")
    assert url.startswith(f"{s3.endpoint_url}/chunkd/dir/clip.mp4?") and "X-Amz-Expires=300" in url
    with urllib.request.urlopen(url, timeout=10) as response:  # no credentials: the URL is enough
        assert response.read() == source.read_bytes()
    daemon.terminate()
    signature = url.rpartition("X-Amz-Signature=")[2]
    assert signature and signature not in daemon.log_path.read_text()
