"""Two different files, one key: the second fails naming both, unless overwriting is asked for.
And `chunkd upload PATH… s3://BUCKET/PREFIX/` says where files go, as `aws s3 cp` does."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.support.bucket import sha256_object
from tests.support.cli import error_lines, run_chunkd
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import sha256_file, write_random
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB

TAKEN = "set CHUNKD_OVERWRITE=true to replace it"


def put(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_random(path, size)


def two_files_one_name(tmp_path: Path) -> tuple[Path, Path]:
    a = put(tmp_path / "a" / "x.mp4", 2 * MiB)
    b = put(tmp_path / "b" / "x.mp4", 3 * MiB)
    return a.resolve(), b.resolve()


def test_upload_of_two_files_with_one_key_fails_the_second(env: dict[str, str], tmp_path: Path, moto: MotoServer) -> None:
    a, b = two_files_one_name(tmp_path)
    result = run_chunkd("upload", str(a), str(b), env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("chunkd: failed:")]
    assert len(failed) == 1, result.stderr
    assert str(a) in failed[0] and str(b) in failed[0] and "s3://chunkd/x.mp4" in failed[0] and TAKEN in failed[0]
    assert sha256_object(moto.client(), "x.mp4") == sha256_file(a), "the first file's object is intact"


def test_upload_with_overwrite_replaces_the_object(env: dict[str, str], tmp_path: Path, moto: MotoServer) -> None:
    a, b = two_files_one_name(tmp_path)
    result = run_chunkd("upload", "--overwrite", str(a), str(b), env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2/2 file(s) uploaded" in result.stderr
    assert sha256_object(moto.client(), "x.mp4") == sha256_file(b), "the last one wins"
    again = put(tmp_path / "c" / "x.mp4", MiB)
    by_env = run_chunkd("upload", str(again), env={**env, "CHUNKD_OVERWRITE": "true"}, timeout=120)
    assert by_env.returncode == 0, by_env.stderr
    assert sha256_object(moto.client(), "x.mp4") == sha256_file(again)


def test_the_same_file_again_is_no_collision(env: dict[str, str], tmp_path: Path, moto: MotoServer) -> None:
    source = write_random(tmp_path / "x.mp4", MiB)
    assert run_chunkd("upload", str(source), env=env, timeout=120).returncode == 0
    again = run_chunkd("upload", str(source), str(source), env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    write_random(source, 2 * MiB)  # the same path, new content: it replaces its own object
    changed = run_chunkd("upload", str(source), env=env, timeout=120)
    assert changed.returncode == 0, changed.stderr
    assert sha256_object(moto.client(), "x.mp4") == sha256_file(source)


def test_daemon_fails_the_second_file_whose_template_gives_the_same_key(
    env: dict[str, str], tmp_path: Path, moto: MotoServer
) -> None:
    env = {**env, "CHUNKD_KEY_TEMPLATE": "{stem}.mp4"}
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        wait_for(lambda: daemon.logged("watching"), timeout=30, what="the daemon to start")
        files = {}
        for relpath, size in (("a/x.mp4", 2 * MiB), ("b/x.mp4", 3 * MiB)):  # each moved in whole
            staged = put(tmp_path / "staged" / relpath, size)
            target = tmp_path / "input" / relpath
            target.parent.mkdir(parents=True)
            files[relpath] = staged.rename(target)
        rows = wait_for(lambda: both_finished(env), timeout=90, what="both files to finish")
        assert daemon.running, "the daemon keeps going"
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    states = {row["relpath"]: row for row in rows}
    assert sorted(row["state"] for row in rows) == ["COMPLETED", "FAILED"]
    winner = next(relpath for relpath, row in states.items() if row["state"] == "COMPLETED")
    loser = next(relpath for relpath in states if relpath != winner)
    reason = states[loser]["last_error"]  # the winner may have been completed or still under way
    assert reason.startswith("key s3://chunkd/x.mp4 is already ") and reason.endswith(f" for {winner}; {TAKEN}")
    assert sha256_object(moto.client(), "x.mp4") == sha256_file(files[winner])
    table = run_chunkd("status", env=env)
    assert "FAILED" in table.stdout and "key s3://chunkd/x.mp4 is already" in table.stdout, table.stdout


def both_finished(env: dict[str, str]) -> list[dict[str, Any]] | None:
    status = run_chunkd("status", "--json", env=env)
    rows: list[dict[str, Any]] = json.loads(status.stdout) if status.returncode == 0 else []
    return rows if len(rows) == 2 and all(row["state"] in ("COMPLETED", "FAILED") for row in rows) else None


def test_upload_to_a_destination_url(env: dict[str, str], tmp_path: Path, moto: MotoServer) -> None:
    moto.create_bucket("other")
    source = write_random(tmp_path / "f.mp4", MiB)
    result = run_chunkd("upload", str(source), "s3://other/pre/", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sha256_object(moto.client(), "pre/f.mp4", bucket="other") == sha256_file(source)
    for bad in ("s3://", "s3://Bad_Bucket/x/", "s3:///pre/"):
        refused = run_chunkd("upload", str(source), bad, env=env)
        assert refused.returncode == 2 and len(error_lines(refused)) == 1 and bad in refused.stderr, refused.stderr


def rows_for(env: dict[str, str], relpath: str) -> list[dict[str, Any]]:
    status = run_chunkd("status", "--json", env=env)
    rows: list[dict[str, Any]] = json.loads(status.stdout) if status.returncode == 0 else []
    return [row for row in rows if row["relpath"] == relpath]


def finished(env: dict[str, str], relpath: str, state: str) -> dict[str, Any] | None:
    rows = rows_for(env, relpath)
    return rows[-1] if rows and rows[-1]["state"] == state else None


def winner_and_loser(daemon: DaemonProcess, env: dict[str, str], tmp_path: Path) -> tuple[Path, Path]:
    """a/x.mp4 uploaded to x.mp4 first; then b/x.mp4, whose key ({stem}.mp4) is taken, fails."""
    wait_for(lambda: daemon.logged("watching"), timeout=30, what="the daemon to start")
    paths = []
    for relpath, size in (("a/x.mp4", 2 * MiB), ("b/x.mp4", 3 * MiB)):
        staged = put(tmp_path / "staged" / relpath, size)
        target = tmp_path / "input" / relpath
        target.parent.mkdir(parents=True)
        paths.append(staged.rename(target))
        wait_for(lambda r=relpath: finished(env, r, "COMPLETED" if r == "a/x.mp4" else "FAILED"),
                 timeout=60, what=f"{relpath} to finish")
    return paths[0], paths[1]


def test_a_retried_file_whose_key_is_taken_fails_again(env: dict[str, str], tmp_path: Path, moto: MotoServer) -> None:
    env = {**env, "CHUNKD_KEY_TEMPLATE": "{stem}.mp4"}
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        winner, _ = winner_and_loser(daemon, env, tmp_path)
        retried_at = time.time()
        retried = run_chunkd("retry", "--failed", env=env)
        assert retried.returncode == 0 and "b/x.mp4" in retried.stdout, retried.stdout + retried.stderr
        # The retried stream runs again and finishes: FAILED again, not COMPLETED over a's object.
        row = wait_for(lambda: next((r for r in rows_for(env, "b/x.mp4")
                                     if r["state"] in ("FAILED", "COMPLETED") and r["updated_at"] > retried_at), None),
                       timeout=90, what="the retried stream to finish")
    finally:
        daemon.stop()
    assert row["state"] == "FAILED" and TAKEN in row["last_error"], row
    assert sha256_object(moto.client(), "x.mp4") == sha256_file(winner), "the first file's object is intact"


def test_a_growing_file_whose_key_is_taken_keeps_one_failed_record(
    env: dict[str, str], tmp_path: Path, moto: MotoServer
) -> None:
    env = {**env, "CHUNKD_KEY_TEMPLATE": "{stem}.mp4"}
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        winner, loser = winner_and_loser(daemon, env, tmp_path)
        size = loser.stat().st_size
        for _ in range(3):  # a recording that goes on: each write is a change the daemon sees
            with loser.open("ab") as out:
                out.write(b"\0" * MiB)
            size += MiB
            wait_for(lambda s=size: all(row["size"] == s for row in rows_for(env, "b/x.mp4")) or None,
                     timeout=60, what=f"the record to follow the file to {size} bytes")
        rows = rows_for(env, "b/x.mp4")
    finally:
        daemon.stop()
    assert len(rows) == 1 and rows[0]["state"] == "FAILED" and TAKEN in rows[0]["last_error"], rows
    assert sha256_object(moto.client(), "x.mp4") == sha256_file(winner)
