"""A daemon's heartbeat in the state store, and `chunkd nodes`: one view of a fleet's daemons.

Every running daemon says every BEAT_SECONDS that it is alive, with what an operator looking at fifty
boxes wants first: its version, since when it runs, how many files wait in its queue, and the last
thing that went wrong. The beat expires after TTL_SECONDS, so a box that died or lost its network
leaves the listing by itself within a few minutes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from chunkd import __version__
from chunkd.errors import StoreError
from chunkd.intake.paths import printable
from chunkd.observe.logs import redact
from chunkd.observe.overview import short_duration
from chunkd.store import NodeRegistry
from chunkd.store.health import StoreHealth

logger = logging.getLogger("chunkd.heartbeat")

BEAT_SECONDS = 10.0
TTL_SECONDS = 120.0  # "seen in the last two minutes": a dozen beats may be missed before a box drops out


class Heartbeat:
    """Beats for one daemon: call `tick()` from its main loop; it beats when one is due."""

    def __init__(
        self,
        store: NodeRegistry,
        node: str,
        *,
        queue_depth: Callable[[], int],
        every: float = BEAT_SECONDS,
        ttl: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        health: StoreHealth | None = None,
    ) -> None:
        self._store = store
        self._health = health  # told of every beat: on an idle daemon, the one write that shows a full disk
        self._node = node
        self._queue_depth = queue_depth
        self._every, self._ttl, self._clock = every, ttl, clock
        self._next = 0.0
        self.started_at = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def error(self, message: str) -> None:
        """Remember the newest failure (redacted) to show in `chunkd nodes`."""
        self.last_error, self.last_error_at = printable(redact(message))[:200], time.time()

    def info(self) -> dict[str, Any]:
        return {
            "version": __version__, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": self.started_at, "queue_depth": self._queue_depth(),
            "last_error": self.last_error, "last_error_at": self.last_error_at,
        }

    def tick(self) -> None:
        """Beat when due; a store outage is the store health's to report, not this loop's to die of."""
        if self._clock() < self._next:
            return
        self._next = self._clock() + self._every
        try:
            self._store.beat(self._node, self.info(), ttl=self._ttl)
        except StoreError as exc:
            logger.debug("heartbeat not recorded: %s", exc)
            if self._health is not None:
                self._health.failed(exc)
            return
        if self._health is not None:
            self._health.ok(wrote=True)


def render_nodes(nodes: list[dict[str, Any]], *, now: float | None = None) -> str:
    """`chunkd nodes` as a table: NODE, VERSION, UP, QUEUE, SEEN, LAST ERROR."""
    if not nodes:
        return "no daemon seen in the last few minutes"
    now = time.time() if now is None else now
    rows = [("NODE", "VERSION", "UP", "QUEUE", "SEEN", "LAST ERROR")]
    for info in nodes:
        rows.append((
            str(info.get("node")), str(info.get("version", "?")),
            short_duration(max(0.0, now - float(info.get("started_at") or now))),
            str(info.get("queue_depth", "?")),
            short_duration(max(0.0, now - float(info.get("seen_at") or now))) + " ago",
            str(info.get("last_error") or "-"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ).rstrip()


def render_nodes_json(nodes: list[dict[str, Any]]) -> str:
    return json.dumps(nodes, indent=2)
