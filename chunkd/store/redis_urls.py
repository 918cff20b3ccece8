"""The URL ledger on Redis: one hash per URL (keyed by a hash of the normalized URL), and a sorted
set of them by creation, so listing is oldest first as SQLite's is."""

from __future__ import annotations

import json
from collections.abc import Iterable

from chunkd.model.states import UrlRecord, UrlState
from chunkd.store.redis_replies import Fields, texts
from chunkd.store.redis_role import RedisRole


class RedisUrlLedger(RedisRole):
    """UrlLedger on Redis; RedisStore hands its URL calls here."""

    def save_url(self, record: UrlRecord) -> None:
        key = self.keys.url(record.url)
        with self._errors("save url"):
            pipe = self.client.pipeline(transaction=True)
            fields: Fields = {"data": json.dumps(record.to_dict()), "state": record.state.value}
            score = {key: record.created_at}
            pipe.hset(key, mapping=fields)
            pipe.zadd(self.keys.urls(), score)
            pipe.execute()

    def get_url(self, url: str) -> UrlRecord | None:
        with self._errors("get url"):
            data = self.client.hget(self.keys.url(url), "data")
        return UrlRecord.from_dict(json.loads(data)) if data else None

    def list_urls(self, states: Iterable[UrlState] | None = None) -> list[UrlRecord]:
        wanted = None if states is None else {UrlState(state) for state in states}
        with self._errors("list urls"):
            keys = texts(self.client.zrange(self.keys.urls(), 0, -1))
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "data")
            found = pipe.execute() if keys else []
        records = [UrlRecord.from_dict(json.loads(data)) for data in found if data]
        return [r for r in records if wanted is None or r.state in wanted]
