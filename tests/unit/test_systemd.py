"""sd_notify over real AF_UNIX datagram sockets, and the watchdog period systemd asks for."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkd.observe import systemd


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No systemd variables from whatever runs the tests (a CI job may itself be a systemd unit)."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in tmp_path, as systemd's notify socket is, and its path."""
    path = str(tmp_path / "n.sock")
    if len(path) >= 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def assert_only_datagram(sock: socket.socket, expected: bytes) -> None:
    assert sock.recv(65536) == expected
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(65536)


def test_notify_sends_the_message_to_a_socket_path(
    clean_env: pytest.MonkeyPatch, receiver: tuple[socket.socket, str]
) -> None:
    sock, path = receiver
    clean_env.setenv("NOTIFY_SOCKET", path)
    assert systemd.notify("READY=1\nSTATUS=watching /data/input") is True
    assert_only_datagram(sock, b"READY=1\nSTATUS=watching /data/input")


@pytest.mark.skipif(sys.platform != "linux", reason="the abstract socket namespace is Linux-only")
def test_notify_supports_the_abstract_namespace(clean_env: pytest.MonkeyPatch) -> None:
    name = f"chunkd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        clean_env.setenv("NOTIFY_SOCKET", f"@{name}")
        assert systemd.notify("WATCHDOG=1") is True
        assert_only_datagram(sock, b"WATCHDOG=1")


def test_notify_without_systemd_is_a_no_op(clean_env: pytest.MonkeyPatch) -> None:
    assert systemd.notify("READY=1") is False
    clean_env.setenv("NOTIFY_SOCKET", "")
    assert systemd.notify("READY=1") is False


@pytest.mark.parametrize("value", ["relative/n.sock", "vsock:2:1234"])
def test_notify_ignores_addresses_that_are_not_unix_sockets(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("NOTIFY_SOCKET", value)
    assert systemd.notify("READY=1") is False


def test_notify_never_raises_when_sending_fails(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))  # nobody listens there
    with caplog.at_level(logging.DEBUG, logger="chunkd.systemd"):
        assert systemd.notify("STOPPING=1") is False
    [record] = [r for r in caplog.records if r.name == "chunkd.systemd"]
    assert record.levelno == logging.DEBUG
    assert "STOPPING=1" in record.getMessage()


# -- watchdog --------------------------------------------------------------------------------


def test_watchdog_off_without_watchdog_usec(clean_env: pytest.MonkeyPatch) -> None:
    assert systemd.watchdog_interval() is None


def test_watchdog_pings_at_half_the_timeout(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WATCHDOG_USEC", "60000000")  # WatchdogSec=60
    assert systemd.watchdog_interval() == 30.0
    clean_env.setenv("WATCHDOG_USEC", "500000")
    assert systemd.watchdog_interval() == 0.25


def test_watchdog_for_this_process(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WATCHDOG_USEC", "60000000")
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0


def test_watchdog_meant_for_another_process(clean_env: pytest.MonkeyPatch) -> None:
    """A child that inherited the variables (or a parent's) must not ping."""
    clean_env.setenv("WATCHDOG_USEC", "60000000")
    clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "0", "-5", "sixty", "1.5"])
def test_watchdog_ignores_unusable_values(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("WATCHDOG_USEC", value)
    assert systemd.watchdog_interval() is None
