"""The command line as users meet it: one-line errors, `--dev`, `upload` and `status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chunkd.s3.devserver import free_port
from tests.support.bucket import read_manifest, sha256_object
from tests.support.cli import error_lines, run_chunkd
from tests.support.daemon import wait_for
from tests.support.files import sha256_file, write_random
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("CHUNKD_PART_SIZE", "1MiB", "CHUNKD_PART_SIZE"),
        ("CHUNKD_PART_SIZE", "lots", "CHUNKD_PART_SIZE"),
        ("CHUNKD_BUCKET", "No_Such:Bucket", "CHUNKD_BUCKET"),
        ("CHUNKD_STATE_URL", "postgres://x", "CHUNKD_STATE_URL"),
        ("CHUNKD_KEY_TEMPLATE", "{nope}", "CHUNKD_KEY_TEMPLATE"),
        ("CHUNKD_IDLE_SECONDS", "-3", "CHUNKD_IDLE_SECONDS"),
    ],
)
def test_bad_config_is_one_line_naming_the_setting_and_exit_2(
    env: dict[str, str], setting: str, value: str, named: str
) -> None:
    result = run_chunkd("run", env={**env, setting: value})
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_bad_flag_value_names_the_flag(env: dict[str, str]) -> None:
    result = run_chunkd("run", "--part-size", "2MiB", env=env)
    assert result.returncode == 2
    assert "--part-size" in error_lines(result)[0]


def test_unreachable_endpoint_is_one_clear_line(env: dict[str, str]) -> None:
    result = run_chunkd("run", env={**env, "CHUNKD_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "cannot reach S3 endpoint" in lines[0], result.stderr


def test_wrong_bucket_is_one_clear_line(server_env: dict[str, str]) -> None:
    result = run_chunkd("run", env={**server_env, "CHUNKD_BUCKET": "no-such-bucket"})
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "'no-such-bucket' does not exist" in lines[0], result.stderr


def test_unreachable_redis_is_one_clear_line_without_password(env: dict[str, str]) -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    result = run_chunkd("run", env={**env, "CHUNKD_STATE_URL": url})
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "state store" in lines[0], result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_dev_mode_needs_no_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKD_", "AWS_"))}
    env.update(CHUNKD_IDLE_SECONDS="1", CHUNKD_POLL_SECONDS="0.1", CHUNKD_LOG_FORMAT="json", CHUNKD_INVALID_MEDIA="upload",
               CHUNKD_HTTP_ADDR="")
    with open(tmp_path / "dev.log", "wb") as log:  # the child keeps its own copy of the descriptor
        daemon = subprocess.Popen([sys.executable, "-m", "chunkd", "run", "--dev"], cwd=tmp_path, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        source = write_random(tmp_path / "movie.mp4", 12 * MiB)
        wait_for(lambda: (tmp_path / "input").is_dir(), timeout=30, what="input folder")
        os.replace(source, tmp_path / "input" / "movie.mp4")
        landed = tmp_path / ".chunkd" / "s3" / "chunkd" / "movie.mp4"
        manifest = wait_for(lambda: (landed.parent / "movie.mp4.manifest.json").is_file(), timeout=60,
                            what="manifest on disk")
        assert manifest
        assert sha256_file(landed) == sha256_file(tmp_path / "input" / "movie.mp4")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert "objects land in" in (tmp_path / "dev.log").read_text()
    status = run_chunkd("status", "--json", env=env, cwd=tmp_path)
    assert status.returncode == 0
    rows = json.loads(status.stdout)
    assert [(row["relpath"], row["state"], row["percent"]) for row in rows] == [("movie.mp4", "COMPLETED", 100.0)]


def test_upload_command_sends_files_and_fails_on_missing_path(server_env: dict[str, str], tmp_path: Path,
                                                              client: Any) -> None:
    env = server_env
    a = write_random(tmp_path / "a.mp4", 7 * MiB)
    b = write_random(tmp_path / "b.bin", 1000)
    result = run_chunkd("upload", str(a), str(b), env=env)
    assert result.returncode == 0, result.stderr
    assert sha256_object(client, "a.mp4") == sha256_file(a)
    assert read_manifest(client, "b.bin") is not None
    missing = run_chunkd("upload", str(tmp_path / "nope.mp4"), env=env)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_status_table_shows_failed_file_with_reason(env: dict[str, str], tmp_path: Path) -> None:
    from chunkd.model.states import StreamRecord, StreamState
    from chunkd.store import open_store

    store = open_store(env["CHUNKD_STATE_URL"])
    record = StreamRecord(id="s1", relpath="x.mp4", source_path="/x.mp4", bucket="chunkd", key="x.mp4",
                          schedule={"base": 8 * MiB, "group": 10000}, size=10)
    record.move_to(StreamState.FAILED, error="file deleted during upload")
    store.save_stream(record)
    store.close()
    result = run_chunkd("status", env=env)
    assert result.returncode == 0
    assert "FAILED" in result.stdout and "x.mp4" in result.stdout and "file deleted during upload" in result.stdout


def test_upload_command_fails_a_non_media_file_without_moving_it(env: dict[str, str], tmp_path: Path, moto: MotoServer) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n" * 100)
    result = run_chunkd("upload", str(fake), env={**env, "CHUNKD_INVALID_MEDIA": "quarantine"})
    assert result.returncode == 1
    assert "failed: notes.mp4" in result.stderr
    assert fake.is_file(), "chunkd upload must never move a file the user named"
    assert "Contents" not in moto.client().list_objects_v2(Bucket="chunkd")
