"""The event log on Redis: one stream, trimmed approximately, read newest first in pages."""

from __future__ import annotations

import json
from typing import Any

from redis.client import Pipeline

from chunkd.store.redis_replies import Fields, member
from chunkd.store.redis_role import RedisRole

# Events are filtered on their own `ts`, but paged by stream id (the Redis server's clock): look this
# far below `since` in id time so an event written by a host whose clock runs ahead is not missed.
_EVENT_CLOCK_SLACK_SECONDS = 300.0
_EVENT_PAGE = 500


class RedisEventLog(RedisRole):
    """EventLog on Redis; RedisStore hands its event calls here."""

    def append_event(self, event: dict[str, Any], *, maxlen: int, pipeline: Pipeline | None = None) -> None:
        fields: Fields = {"data": json.dumps(event)}
        target = pipeline if pipeline is not None else self.client
        with self._errors("append event"):
            target.xadd(self.keys.events(), fields, maxlen=max(1, maxlen), approximate=True)

    def list_events(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        low = "-" if since is None else str(max(0, int((since - _EVENT_CLOCK_SLACK_SECONDS) * 1000)))
        found: list[dict[str, Any]] = []
        high = "+"
        with self._errors("list events"):
            while len(found) < limit:
                # XREVRANGE gives a list of entries, each with fields; redis-py's type also admits the nil
                # reply and the nil entries of XCLAIM, whose parser it shares.
                page = self.client.xrevrange(self.keys.events(), max=high, min=low, count=_EVENT_PAGE) or []
                for _, fields in page:
                    if fields is None:
                        continue
                    event = json.loads(fields["data"])
                    if since is None or float(event.get("ts", 0)) >= since:
                        found.append(event)
                if len(page) < _EVENT_PAGE:
                    break
                high = f"({member(page[-1][0])}"
        return list(reversed(found[:limit]))
