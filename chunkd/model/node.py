"""A daemon's node name (CHUNKD_NODE) and what it scopes: which stream records, which leases.

A fleet is many boxes, each with its own drop folder, sharing one state store and one bucket. Two
boxes may both record `cam1/2026-12-04.mp4`: a stream is identified by (node, relpath) for a folder
local to its box, and by relpath alone for a folder several daemons share (CHUNKD_SHARED_INPUT, an
NFS share coordinated by leases). A record from before nodes were recorded (no `node`) belongs to
whichever daemon reads it: a single box, or a shared folder, as it was written by.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from chunkd.model.states import StreamRecord

# A key segment, a Redis key part and a log field as it is: no '/', no ':', no spaces or controls.
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def validate_node(name: str) -> str:
    """The node name, or ValueError: 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit."""
    if not _NODE_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a node name: 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def default_node() -> str:
    """The hostname as it is (an FQDN whole); one that is no valid node name has its other
    characters made '-'."""
    host = socket.gethostname()
    return host if _NODE_RE.fullmatch(host) else re.sub(r"[^A-Za-z0-9._-]", "-", host).strip("-._")[:63] or "node"


@dataclass(frozen=True)
class Scope:
    """Which stream records a daemon's folder holds, and which leases its jobs take.

    `node` None: a shared folder, whose streams every daemon on it sees (relpath alone names one).
    Else a folder local to that node: its own local streams only. A record without a node (written
    before nodes were) is in every scope: a single box's, or a shared folder's, as it was."""

    node: str | None
    # A SQLite store is one daemon's (it is locked): every record in it is this box's, whatever
    # CHUNKD_NODE was when it was written (a container gets a new hostname each time it is made).
    single_box: bool = False

    @classmethod
    def of(cls, node: str, *, shared_input: bool, single_box: bool = False) -> Scope:
        return cls(None if shared_input else node, single_box)

    @classmethod
    def of_record(cls, record: StreamRecord) -> Scope:
        """The scope `record` was written in."""
        return cls(None if record.shared or record.node is None else record.node)

    def holds(self, record: StreamRecord) -> bool:
        if record.node is None or self.single_box:
            return True
        if self.node is None:
            return record.shared
        return not record.shared and record.node == self.node

    def lease_name(self, relpath: str) -> str:
        """The relpath in a shared folder (every daemon reaches for the same lease); `@node/relpath`
        in a local one, so two boxes with one relpath never wait on each other. A single box's
        (SQLite's, in memory) stays the relpath."""
        return relpath if self.node is None or self.single_box else f"@{self.node}/{relpath}"
