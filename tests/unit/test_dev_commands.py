"""`--dev` on every command that talks to S3 or the store: after `chunkd run --dev` (which shows
the secret and leaves the endpoint and keys in ./.chunkd/ for the others, readable only by its
owner), verify, gc, doctor and cancel find the dev state and the dev S3 server; with no daemon
running they start the server themselves. Without --dev, next to ./.chunkd/, the error says so."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.support.cli import error_lines, run_chunkd
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import write_random
from tests.support.sizes import MiB


def dev_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKD_", "AWS_"))}
    env.update(CHUNKD_IDLE_SECONDS="1", CHUNKD_POLL_SECONDS="0.1", CHUNKD_INVALID_MEDIA="upload",
               CHUNKD_HTTP_ADDR="", CHUNKD_LOG_FORMAT="text", AWS_EC2_METADATA_DISABLED="true", HOME="/nonexistent")
    return env


def test_other_commands_find_the_dev_setup(tmp_path: Path) -> None:
    env = dev_env()
    daemon = DaemonProcess(env, tmp_path / "dev.log", args=("--dev",), cwd=tmp_path).start()
    try:
        wait_for(lambda: daemon.logged("watching") or not daemon.running, timeout=60, what="the daemon watching")
        assert daemon.running, daemon.log_path.read_text()
        published = tmp_path / ".chunkd" / "dev.json"
        assert stat.S_IMODE(published.stat().st_mode) == 0o600
        keys = json.loads(published.read_text())
        assert keys["secret_key"] in daemon.log_path.read_text()  # shown once, at start
        assert keys["endpoint_url"].startswith("http://127.0.0.1:")

        write_random(tmp_path / "clip.mp4", 2 * MiB)
        os.replace(tmp_path / "clip.mp4", tmp_path / "input" / "clip.mp4")
        landed = tmp_path / ".chunkd" / "s3" / "chunkd" / "clip.mp4.manifest.json"
        wait_for(landed.is_file, timeout=60, what="clip.mp4 uploaded")

        verify = run_chunkd("verify", "--dev", "input/clip.mp4", env=env, cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        doctor = run_chunkd("doctor", "--dev", env=env, cwd=tmp_path)
        assert "OK    s3 bucket" in doctor.stdout, doctor.stdout + doctor.stderr
        gc = run_chunkd("gc", "--dev", "--dry-run", env=env, cwd=tmp_path)
        assert gc.returncode == 0, gc.stdout + gc.stderr
        for command in (["status", "--dev"], ["stats", "--dev"], ["retry", "--dev", "--failed"]):
            assert run_chunkd(*command, env=env, cwd=tmp_path).returncode == 0, command

        plain = run_chunkd("gc", "--dry-run", env=env, cwd=tmp_path)
        assert plain.returncode != 0
        (line,) = error_lines(plain)
        assert "--dev" in line, line
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    assert not published.exists()

    alone = run_chunkd("verify", "--dev", "input/clip.mp4", env=env, cwd=tmp_path)  # starts its own server
    assert alone.returncode == 0, alone.stdout + alone.stderr
