"""The Redis key layout, in one place. Keys, with the default prefix:

    chunkd:stream:<id>           hash: data (StreamRecord JSON), state, relpath
    chunkd:stream:<id>:parts     hash: part number -> PartRecord JSON
    chunkd:streams               sorted set: every stream id, scored by discovered_at
    chunkd:streams:<STATE>       sorted set: ids currently in STATE, scored by discovered_at
    chunkd:path:<relpath>        sorted set: ids of streams for that path, scored by discovered_at
    chunkd:path@<node>:<relpath> sorted set: the same, of one node's local folder only (a fleet's lookups)
    chunkd:key:<bucket>/<key>    sorted set: ids of streams for that object, scored by discovered_at
    chunkd:sha256:<hex>          string: id of the completed stream whose object has that content
    chunkd:sizes                 set: sizes of indexed content (a file of another size is no duplicate)
    chunkd:url:<sha256 of url>   hash: data (UrlRecord JSON), state
    chunkd:urls                  sorted set: url keys scored by created_at
    chunkd:events                stream: field `data` = event JSON, trimmed to about events_maxlen
    chunkd:lease:<relpath>       string "<owner>|<token>", expires after lease_seconds (redis_leases.py)
    chunkd:fence:<relpath>       integer: the newest fencing token issued for that path (never expires)
    chunkd:node:<node>           string: a daemon's heartbeat (JSON), expires unless renewed (redis_nodes.py)
    chunkd:nodes                 sorted set: node names scored by their last heartbeat
    chunkd:schema                hash: which indexes the records are in (redis_backfill.py)
    chunkd:mark                  string: a random token, gone with the data (RedisStore.data_mark)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from chunkd.model.states import StreamState


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "chunkd:"

    def stream(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}"

    def parts(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}:parts"

    def streams(self, state: StreamState | None = None) -> str:
        return f"{self.prefix}streams" + (f":{state.value}" if state else "")

    def path(self, relpath: str) -> str:
        return f"{self.prefix}path:{relpath}"

    def node_path(self, node: str, relpath: str) -> str:
        """A node name has no ':' (chunkd.model.node), so no node's key is another's or path()'s."""
        return f"{self.prefix}path@{node}:{relpath}"

    def object(self, bucket: str, key: str) -> str:
        return f"{self.prefix}key:{bucket}/{key}"

    def schema(self) -> str:
        return f"{self.prefix}schema"

    def content(self, sha256: str) -> str:
        return f"{self.prefix}sha256:{sha256}"

    def content_pattern(self) -> str:
        """Every content key, for SCAN."""
        return f"{self.prefix}sha256:*"

    def sizes(self) -> str:
        return f"{self.prefix}sizes"

    def url(self, url: str) -> str:
        return f"{self.prefix}url:{hashlib.sha256(url.encode()).hexdigest()}"

    def urls(self) -> str:
        return f"{self.prefix}urls"

    def events(self) -> str:
        return f"{self.prefix}events"

    def node(self, name: str) -> str:
        return f"{self.prefix}node:{name}"

    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    def mark(self) -> str:
        return f"{self.prefix}mark"
