"""The content index on Redis: SHA-256 -> the completed stream holding those bytes, and the set of
sizes indexed, so a file of any other size is known to be new without hashing it first."""

from __future__ import annotations

from redis.client import Pipeline

from chunkd.store.redis_replies import text
from chunkd.store.redis_role import RedisRole


class RedisContentIndex(RedisRole):
    """ContentIndex on Redis, by stream id; RedisStore turns the id into the stream's record."""

    def index_content(self, sha256: str, stream_id: str, *, size: int | None = None) -> None:
        with self._errors(f"index content of stream {stream_id}"):
            pipe = self.client.pipeline(transaction=True)
            self.queue_index(pipe, sha256, stream_id, size=size)
            pipe.execute()

    def queue_index(self, pipe: Pipeline, sha256: str, stream_id: str, *, size: int | None) -> None:
        """The index entry, queued on a MULTI that also writes something else (the stream's record)."""
        pipe.set(self.keys.content(sha256), stream_id)
        if size is not None:
            pipe.sadd(self.keys.sizes(), size)

    def may_hold_size(self, size: int) -> bool:
        with self._errors("look up content size"):
            # As SADD stored it: redis-py sends an int as its decimal text.
            if self.client.sismember(self.keys.sizes(), str(size)):
                return True
            # Content indexed before sizes were kept: cannot rule it out.
            return not self.client.exists(self.keys.sizes()) and bool(
                next(iter(self.client.scan_iter(self.keys.content_pattern(), count=100)), None)
            )

    def holder(self, sha256: str) -> str | None:
        """The id of the stream last indexed under this SHA-256, if any."""
        with self._errors("find stream by content"):
            return text(self.client.get(self.keys.content(sha256)))

    def forget_content(self, sha256: str) -> None:
        with self._errors("forget content"):
            self.client.delete(self.keys.content(sha256))
