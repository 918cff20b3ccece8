"""Two files, one key: a key template that maps two paths to one object, or `chunkd upload a/x.mp4
b/x.mp4`. The second must not silently replace the first's object; `overwrite` lets it.

A new stream claims its key by being saved, then looks for a rival: another file's stream for the
same object that is completed, or under way and discovered first. Saving before looking means two
workers racing for one key both see each other, and the one discovered later gives way.
"""

from __future__ import annotations

from chunkd.model.states import StreamRecord, StreamState
from chunkd.store import StreamReader


def find_rival(store: StreamReader, record: StreamRecord, *, endpoint: str) -> StreamRecord | None:
    """Another file's stream holding (or taking) the object `record` is for, if any."""
    for other in store.find_by_key(record.bucket, record.key):
        if (other.endpoint or endpoint) != endpoint or _same_file(other, record):
            continue
        if other.state is StreamState.COMPLETED:
            return other
        if not other.state.terminal and (other.discovered_at, other.id) < (record.discovered_at, record.id):
            return other
    return None


def taken_message(record: StreamRecord, rival: StreamRecord) -> str:
    """Names the other file: by its path relative to the drop folder, or by its full path when
    both have one name (`chunkd upload a/x.mp4 b/x.mp4`)."""
    other = rival.relpath if rival.relpath != record.relpath else rival.source_path
    return (
        f"key s3://{rival.bucket}/{rival.key} is already {rival.state.value.lower()} for {other}; "
        "set CHUNKD_OVERWRITE=true to replace it"
    )


def _same_file(a: StreamRecord, b: StreamRecord) -> bool:
    """The same path (a file replaced in place re-uploads to its own key) or the same inode."""
    return a.source_path == b.source_path or (a.device, a.inode) == (b.device, b.inode) != (0, 0)
