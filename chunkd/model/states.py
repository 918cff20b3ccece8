"""Stream states, the transitions between them, and the records the checkpoint store keeps."""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from chunkd.errors import InvalidTransition


class StreamState(str, enum.Enum):
    PENDING = "PENDING"  # discovered, waiting for a worker
    UPLOADING = "UPLOADING"  # parts are being sent while the file may still grow
    FINALIZING = "FINALIZING"  # idle: tail part, complete, verify, manifest
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"  # not readable as media: moved aside with a reason, nothing uploaded

    @property
    def terminal(self) -> bool:
        return self in (StreamState.COMPLETED, StreamState.FAILED, StreamState.QUARANTINED)


_ALLOWED: dict[StreamState, frozenset[StreamState]] = {
    StreamState.PENDING: frozenset({StreamState.UPLOADING, StreamState.FAILED}),
    StreamState.UPLOADING: frozenset({StreamState.UPLOADING, StreamState.FINALIZING, StreamState.FAILED}),
    # FINALIZING -> UPLOADING: the file grew again before the object was completed.
    StreamState.FINALIZING: frozenset(
        {StreamState.UPLOADING, StreamState.COMPLETED, StreamState.FAILED, StreamState.QUARANTINED}
    ),
    StreamState.COMPLETED: frozenset(),
    StreamState.QUARANTINED: frozenset(),
    # A failed stream can be retried from where it stopped.
    StreamState.FAILED: frozenset({StreamState.PENDING, StreamState.UPLOADING}),
}


def check_transition(current: StreamState, new: StreamState) -> None:
    """Raise unless `current -> new` is a legal move of the per-file state machine."""
    if new not in _ALLOWED[current]:
        raise InvalidTransition(f"{current.value} -> {new.value}")


@dataclass(frozen=True)
class PartRecord:
    """A part S3 has acknowledged. Only ever recorded after the server said yes."""

    number: int
    offset: int
    size: int
    etag: str
    # The part's own checksum: the one the server verified as it took the part (its signed SHA-256,
    # or its Content-MD5 when the body went UNSIGNED-PAYLOAD); the other one is "" (never computed).
    sha256: str = ""
    md5: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Without the checksum that was not computed: a part carries only the one that was sent."""
        return {name: value for name, value in asdict(self).items() if value != "" or name not in ("sha256", "md5")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartRecord:
        return cls(
            number=int(data["number"]),
            offset=int(data["offset"]),
            size=int(data["size"]),
            etag=str(data["etag"]),
            sha256=str(data.get("sha256") or ""),
            md5=str(data.get("md5") or ""),
        )


def _record_to_dict(record: Any) -> dict[str, Any]:
    """A new top-level dict whose nested values are the record's own: every caller serializes it or
    replaces top-level keys. (`asdict`'s deep copy was a few percent of a small file's CPU.)"""
    data = {name: getattr(record, name) for name in record.__dataclass_fields__}
    data["state"] = record.state.value
    return data


_R = TypeVar("_R", "StreamRecord", "UrlRecord")


def _record_from_dict(cls: type[_R], data: dict[str, Any], states: type[enum.Enum]) -> _R:
    """Unknown keys are ignored, so records written by a newer version still load."""
    fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
    fields["state"] = states(fields["state"])
    return cls(**fields)


def new_stream_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class StreamRecord:
    """Everything needed to resume one file's upload on any restart."""

    id: str
    relpath: str
    source_path: str
    bucket: str
    key: str
    schedule: dict[str, Any]
    state: StreamState = StreamState.PENDING
    device: int = 0
    inode: int = 0
    size: int = 0
    mtime: float = 0.0
    upload_id: str | None = None
    sha256: str | None = None
    dedup_of: str | None = None  # the object with the same bytes (its key; s3://B/K in another bucket)
    origin: dict[str, Any] | None = None  # for downloads: url, webpage_url, extractor, title, …
    endpoint: str | None = None  # the S3 endpoint it goes to (S3Target.destination); None: recorded before
    # The daemon (CHUNKD_NODE) that found the file; None: recorded before nodes were. `shared`: its
    # folder is shared by several daemons (CHUNKD_SHARED_INPUT), so relpath alone names the stream
    # (chunkd.model.node).
    node: str | None = None
    shared: bool = False
    # The object's attributes (ObjectAttributes.to_dict), fixed when its upload was created: a
    # resumed upload keeps them. None: not created yet, or created before attributes were recorded.
    attributes: dict[str, Any] | None = None
    thumbnail_key: str | None = None  # its poster frame's key, once uploaded (chunkd.pipeline.thumbnail)
    last_error: str | None = None
    # Set by `chunkd cancel`: the file stays FAILED while it is the same file, even as it grows
    # (see chunkd.pipeline.discovery); `chunkd retry` (leaving FAILED) clears it.
    cancelled_at: float | None = None
    # Seconds with bytes of this stream on the wire (parts in flight, the PutObject): `chunkd status`
    # gives a finished stream's speed over these, not over the waits for growth and idleness.
    send_seconds: float = 0.0
    discovered_at: float = field(default_factory=time.time)
    first_byte_at: float | None = None
    completed_at: float | None = None
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return _record_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamRecord:
        return _record_from_dict(cls, data, StreamState)

    def move_to(self, new: StreamState, *, error: str | None = None) -> None:
        check_transition(self.state, new)
        self.state = new
        self.last_error = error
        self.updated_at = time.time()
        if new is not StreamState.FAILED:
            self.cancelled_at = None


class UrlState(str, enum.Enum):
    """One URL from a links file: downloaded first, then uploaded through the normal pipeline."""

    PENDING = "PENDING"
    DOWNLOADING = "DOWNLOADING"
    DOWNLOADED = "DOWNLOADED"
    UPLOADING = "UPLOADING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # `chunkd retry --failed` fetches it again
    REJECTED = "REJECTED"  # refused by the address policy (metadata, private): never retried

    @property
    def terminal(self) -> bool:
        return self in (UrlState.COMPLETED, UrlState.FAILED, UrlState.REJECTED)


@dataclass
class UrlRecord:
    """Keyed by the normalized URL, so a URL seen again in a later links file is not fetched again."""

    url: str
    display: str  # the URL with credentials redacted: what logs, status and reports show
    links_file: str  # relpath of the links file that first asked for it
    relpath: str  # where the download goes in the key space, as if dropped at that path
    state: UrlState = UrlState.PENDING
    attempts: int = 0
    last_error: str | None = None
    staged_path: str | None = None
    key: str | None = None
    stream_id: str | None = None
    bytes_done: int = 0
    size: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    room_needed: int = 0  # ran out of staging space: PENDING until this many bytes are free there

    def to_dict(self) -> dict[str, Any]:
        return _record_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UrlRecord:
        return _record_from_dict(cls, data, UrlState)

    def move_to(self, new: UrlState, *, error: str | None = None) -> None:
        self.state = new
        self.last_error = error
        self.updated_at = time.time()
