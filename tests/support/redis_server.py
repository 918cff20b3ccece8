"""A real redis-server on a free local port that tests can stop, kill and start again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Self

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_redis_server() -> str:
    """Path of the binary; skips the test without one, except in CI where a skip would hide it."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if _in_ci():
            pytest.fail(f"{message}; CI must run the Redis tests", pytrace=False)
        pytest.skip(message)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process with no persistence; `start` after `stop`/`kill` reuses the port."""

    host = "127.0.0.1"

    def __init__(self, *, port: int | None = None, startup_timeout: float = 10.0, persistent: bool = False) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.persistent = persistent  # append-only file, fsynced on every write: survives stop/start
        self.dir = tempfile.mkdtemp(prefix="chunkd-redis-")
        self._log_path = os.path.join(self.dir, "redis.log")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        args = [self.binary, "--port", str(self.port), "--bind", self.host]
        if self.persistent:
            args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir]
        else:
            args += ["--save", "", "--appendonly", "no", "--dir", self.dir]
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_ready()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean shutdown, as a restarted service would see it."""
        if not self.running:
            return
        assert self._process is not None
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as on a crash or OOM kill."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server exited on start:\n{self._log_tail()}")
            if self._pong():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server not answering PING after {self.startup_timeout}s:\n{self._log_tail()}")

    def _pong(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self, lines: int = 20) -> str:
        with open(self._log_path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])
