"""Running `chunkd` as a real subprocess, the way users and systemd do, and waiting on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

SCAN_LINE = "scan offered"  # the watcher's DEBUG line after each scan of the input folder


def wait_for(predicate: Callable[[], T | None | Literal[False]], *, timeout: float, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll until `predicate()` is truthy and return that value; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def daemon_env(*, input_dir: Path, state_url: str, endpoint_url: str, access_key: str, secret_key: str,
               **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKD_", "AWS_"))}
    env.update(
        CHUNKD_INPUT_DIR=str(input_dir),
        CHUNKD_CREATE_INPUT_DIR="true",  # tests drop files into folders the daemon makes; off is tested itself
        CHUNKD_STATE_URL=state_url,
        CHUNKD_S3_ENDPOINT_URL=endpoint_url,
        CHUNKD_BUCKET="chunkd",
        CHUNKD_IDLE_SECONDS="1",
        CHUNKD_RESCAN_SECONDS="5",
        CHUNKD_POLL_SECONDS="0.1",
        CHUNKD_LOG_FORMAT="json",
        CHUNKD_INVALID_MEDIA="upload",  # most tests drop random bytes named .mp4; media tests opt back in
        CHUNKD_HTTP_ADDR="",  # tests that need the endpoint pass a free port
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_DEFAULT_REGION="us-east-1",
    )
    env.update({f"CHUNKD_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class DaemonProcess:
    """`python -m chunkd run` with its output in a log file the test can read."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, args: tuple[str, ...] = (), cwd: Path | None = None):
        self.env = dict(env)
        self.log_path = log_path
        self.args = args
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chunkd", "run", *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, exactly like a crash or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        """Started and not exited (a crash would end it)."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                lines.append({"event": raw})
        return lines

    def logged(self, text: str) -> bool:
        return text in self.log_path.read_text(errors="replace")

    def events(self, text: str, **fields: Any) -> list[dict[str, Any]]:
        """Log lines whose message contains `text` and whose fields (relpath=...) are as given."""
        return [
            line for line in self.log_lines()
            if text in str(line.get("event", "")) and all(line.get(k) == v for k, v in fields.items())
        ]


def wait_logged(daemon: DaemonProcess, text: str, *, more_than: int = 0, timeout: float = 60,
                **fields: Any) -> list[dict[str, Any]]:
    """Until more than `more_than` log lines contain `text` (and `fields`); returns them all."""

    def lines() -> list[dict[str, Any]] | None:
        found = daemon.events(text, **fields)
        return found if len(found) > more_than else None

    return wait_for(lines, timeout=timeout, what=f"more than {more_than} log line(s) with {text!r}")


def wait_scans(daemon: DaemonProcess, count: int, *, timeout: float = 60) -> list[dict[str, Any]]:
    """Until the watcher has finished `count` more scans of the input folder; returns their lines.

    The lines are DEBUG: the daemon must run with log_level=DEBUG. A scan under way when this is
    called counts as the first, so "a whole scan after X" is `count=2`.
    """
    start = len(daemon.events(SCAN_LINE))
    return wait_logged(daemon, SCAN_LINE, more_than=start + count - 1, timeout=timeout)[start:]
