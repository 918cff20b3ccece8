"""Replies as the store reads them. redis-py types a reply `bytes | str` (it cannot know how the client
decodes); RedisStore only works with a client created with decode_responses=True, so every reply is a
str at run time. These narrow it in one place, and fail loudly should a bytes reply ever get through."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from redis.typing import EncodableT, FieldT

# A hash's or a stream entry's fields, typed as HSET (mapping=) and XADD take them.
Fields: TypeAlias = dict[FieldT, EncodableT]


def text(value: bytes | str | None) -> str | None:
    """A reply that may be nil (GET, HGET), as the str it is on a decoding client."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a decoded reply, got {type(value).__name__}")


def member(value: object) -> str:
    """A reply that is never nil (a member, a key, a stream id), as the str it is on a decoding client."""
    if not isinstance(value, str):
        raise TypeError(f"expected a decoded reply, got {type(value).__name__}")
    return value


def texts(values: Iterable[object]) -> list[str]:
    """Members or keys (ZRANGE without scores): redis-py types them with the scored forms too."""
    return [member(value) for value in values]
