"""systemd's service protocol (sd_notify and the watchdog), spoken directly.

The protocol is one datagram of `KEY=VALUE` lines to the AF_UNIX socket named in $NOTIFY_SOCKET,
so a dependency is not worth it (PyPI's `sdnotify` has been unmaintained since 2017). Outside
systemd (a terminal, a container, the tests) $NOTIFY_SOCKET is unset and every call is a cheap
no-op: the daemon can call these unconditionally.

Messages chunkd sends: `READY=1` once the watcher runs (the unit is `Type=notify`, so systemd
holds dependants and counts the start timeout until then), `WATCHDOG=1` from the main loop at
least every `watchdog_interval()` seconds (`WatchdogSec=` in the unit), `STOPPING=1` when a warm
stop begins.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger("chunkd.systemd")


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to systemd; True if it was sent.

    False when not run by systemd ($NOTIFY_SOCKET unset) or when sending fails: a lost
    notification must never take the daemon down, so OSError is logged at debug, not raised.
    """
    address = _socket_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode("utf-8"), address)
    except OSError as exc:
        logger.debug("sd_notify %r to %r failed: %s", message, address, exc)
        return False
    return True


def _socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET -> an AF_UNIX address: a path, or '@name' for Linux's abstract namespace."""
    if value.startswith("@"):
        # The abstract namespace has no file: its name starts with a NUL byte instead of '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        logger.debug("NOTIFY_SOCKET=%r is not a unix socket address; notifications off", value)
    return None


def watchdog_interval() -> float | None:
    """Seconds between `WATCHDOG=1` pings, or None when systemd expects none.

    systemd sets $WATCHDOG_USEC to the unit's `WatchdogSec=`; pinging at half of it (as
    sd_watchdog_enabled(3) advises) leaves room for one late wake-up. $WATCHDOG_PID, when set,
    names the process the watchdog is meant for: a child that inherited the variables must not ping.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        interval = int(usec)
    except ValueError:
        return None
    if interval <= 0:
        return None
    return interval / 2 / 1_000_000
