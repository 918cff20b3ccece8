"""`chunkd run` as a real daemon for the bench: started, killed with SIGKILL, stopped with SIGTERM,
and read through its /metrics endpoint."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Self

from bench.measure import kill_group
from bench.peers import aws_env, chunkd_argv, chunkd_pinned
from bench.servers import BUCKET, Endpoint

_UPLOADED = re.compile(r"^chunkd_uploaded_bytes_total\s+([0-9.e+]+)$", re.MULTILINE)


def daemon_env(
    endpoint: Endpoint, *, input_dir: Path, state_db: Path, prefix: str, http_addr: str = "",
    settings: dict[str, str] | None = None,
) -> dict[str, str]:
    env = aws_env(endpoint)
    env.update(
        CHUNKD_INPUT_DIR=str(input_dir),
        CHUNKD_STATE_URL=f"sqlite:///{state_db}",
        CHUNKD_S3_ENDPOINT_URL=endpoint.url,
        CHUNKD_BUCKET=BUCKET,
        CHUNKD_KEY_TEMPLATE=f"{prefix}/{{relpath}}",
        CHUNKD_LOG_FORMAT="json",
        CHUNKD_LOG_LEVEL="INFO",
        CHUNKD_HTTP_ADDR=http_addr,
    )
    env.update(chunkd_pinned())
    env.update(settings or {})
    return env


class Daemon:
    """One `python -m chunkd run`, its output appended to `log`."""

    def __init__(self, env: dict[str, str], log: Path, cwd: Path) -> None:
        self.env, self.log, self.cwd = env, log, cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [*chunkd_argv(), "run"], env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, exactly like a crash or an OOM kill."""
        if self.process is not None:
            kill_group(self.process.pid)
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.kill()


def get(addr: str, path: str, timeout: float = 2.0) -> tuple[int, str] | None:
    host, _, port = addr.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def uploaded_bytes(addr: str) -> int | None:
    """`chunkd_uploaded_bytes_total` from /metrics: bytes of parts S3 acknowledged."""
    answer = get(addr, "/metrics")
    if answer is None or answer[0] != 200:
        return None
    match = _UPLOADED.search(answer[1])
    return None if match is None else int(float(match.group(1)))
