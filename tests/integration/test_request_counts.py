"""What a folder of small files costs in requests, counted by the S3 server itself.

Each file is one PutObject and its manifest one more; a first run over files older than the run
checks for earlier manifests with one listing of the folder, not a GET per file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.s3_servers import MotoServer

FILES = 30


def make_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"clip{index:02d}.mp4").write_bytes(os.urandom(10_000 + index))
    old = time.time() - 3600  # older than the run: each one is checked for an earlier upload
    for path in folder.iterdir():
        os.utime(path, (old, old))


def upload(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**env, "CHUNKD_INVALID_MEDIA": "upload", "CHUNKD_DEDUP": "off"}
    return subprocess.run(
        [sys.executable, "-m", "chunkd", "upload", str(folder)], check=False, env=env, capture_output=True, text=True,
        timeout=120,
    )


def test_a_folder_of_small_files_costs_two_puts_each_and_one_listing(
    moto: MotoServer, env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "batch"
    make_files(folder, FILES)

    result = upload(env, folder)

    assert result.returncode == 0, result.stderr
    counts = moto.counts()
    assert counts["PutObject"] == 2 * FILES  # the file, then its manifest
    assert moto.probes() == 1  # and once per start: does the server check signed SHA-256s?
    assert counts["ListObjectsV2"] == 1
    assert counts["GetObject"] == 0
    assert counts["HeadObject"] == 0


def test_files_uploaded_before_a_lost_state_are_found_from_the_listing(
    moto: MotoServer, env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "batch"
    make_files(folder, FILES)
    assert upload(env, folder).returncode == 0
    state = Path(env["CHUNKD_STATE_URL"].removeprefix("sqlite:///"))
    for lost in state.parent.glob(state.name + "*"):  # the database, its WAL and lock: the state is lost
        lost.unlink()
    before = moto.counts()

    result = upload(env, folder)

    assert result.returncode == 0, result.stderr
    counts = moto.counts() - before
    assert counts["PutObject"] == 0  # nothing is sent again
    assert counts["ListObjectsV2"] == 1
    assert counts["GetObject"] == FILES  # each manifest the listing shows is read and checked
