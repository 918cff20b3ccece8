"""Store failures surface as StoreError without secrets (StoreFullError when Redis answers but refuses
writes); Redis writes can be batched on a pipeline."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from chunkd.errors import StoreError, StoreFullError
from chunkd.model.states import PartRecord, StreamRecord
from chunkd.store.health import StoreHealth
from chunkd.store.redis import RedisStore
from chunkd.store.redis_errors import RedisErrors
from tests.support.redis_server import free_port


@pytest.fixture
def unreachable() -> Iterator[RedisStore]:
    """A store whose URL carries a password and points at a port nobody listens on."""
    store = RedisStore.from_url(f"redis://user:secret@127.0.0.1:{free_port()}/0")
    yield store
    store.close()


def _part(number: int) -> PartRecord:
    return PartRecord(number=number, offset=0, size=5, etag='"e"', sha256="0" * 64)


def _assert_store_error_without_secret(info: pytest.ExceptionInfo[StoreError]) -> None:
    assert type(info.value) is StoreError
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    for text in (str(info.value), repr(info.value), str(info.value.__cause__)):
        assert "secret" not in text
    assert "127.0.0.1" in str(info.value)  # but enough to find the server


def test_ping_unreachable_raises_store_error(unreachable: RedisStore) -> None:
    with pytest.raises(StoreError) as info:
        unreachable.ping()
    _assert_store_error_without_secret(info)


def test_save_stream_unreachable_raises_store_error(unreachable: RedisStore) -> None:
    record = StreamRecord(id="s1", relpath="a.mp4", source_path="/in/a.mp4", bucket="b", key="a.mp4", schedule={})
    with pytest.raises(StoreError) as info:
        unreachable.save_stream(record)
    _assert_store_error_without_secret(info)


def test_reads_unreachable_raise_store_error(unreachable: RedisStore) -> None:
    for call in (lambda: unreachable.list_parts("s1"), unreachable.list_streams, lambda: unreachable.get_stream("s1")):
        with pytest.raises(StoreError):
            call()


def test_malformed_url_is_redacted() -> None:
    with pytest.raises(StoreError) as info:
        RedisStore.from_url("redis://user:secret@host:notaport/0")
    assert "secret" not in str(info.value) and "host" in str(info.value)


def test_client_must_decode_responses() -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStore(fakeredis.FakeRedis())


def test_parts_on_a_pipeline_wait_for_execute() -> None:
    store = RedisStore(fakeredis.FakeRedis(decode_responses=True))
    pipe = store.client.pipeline(transaction=True)
    store.record_part("s1", _part(1), pipeline=pipe)
    store.record_part("s1", _part(2), pipeline=pipe)
    assert store.list_parts("s1") == []
    pipe.execute()
    assert store.list_parts("s1") == [_part(1), _part(2)]


def test_drop_parts_on_a_pipeline_waits_for_execute() -> None:
    store = RedisStore(fakeredis.FakeRedis(decode_responses=True))
    store.record_part("s1", _part(1))
    pipe = store.client.pipeline(transaction=True)
    store.drop_parts("s1", [1], pipeline=pipe)
    assert store.list_parts("s1") == [_part(1)]
    pipe.execute()
    assert store.list_parts("s1") == []


@pytest.mark.parametrize("name", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path"])
def test_a_tls_file_that_is_not_there_is_named_at_open(name: str, tmp_path: Path) -> None:
    """Not at the first connection as `Error 2 connecting to host:port. No such file or directory.`"""
    missing = tmp_path / "gone.pem"
    with pytest.raises(StoreError) as info:
        RedisStore.from_url(f"rediss://:secret@127.0.0.1:{free_port()}/0?{name}={missing}")
    message = str(info.value)
    assert f"{name}={missing} is not a readable" in message and "127.0.0.1" in message, message
    assert "secret" not in message


def test_tls_files_that_are_there_open(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    store = RedisStore.from_url(f"rediss://127.0.0.1:{free_port()}/0?ssl_ca_certs={ca}&ssl_ca_path={tmp_path}")
    store.close()


MISCONF = (
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk. Commands "
    "that may modify the data set are disabled, because this instance is configured to report errors during writes "
    "if RDB snapshotting fails (stop-writes-on-bgsave-error option). Please check the Redis logs for details about "
    "the RDB error."
)
OOM = "command not allowed when used memory > 'maxmemory'."  # redis-py strips the reply's "OOM "


def _in_pipeline(exc: redis.RedisError) -> redis.RedisError:
    """As redis-py's Pipeline.annotate_exception leaves it (the command may hold a whole record)."""
    exc.args = (f"Command # 1 (HSET chunkd:stream:s1 data {{...secret...}}) of pipeline caused error: {exc.args[0]}",)
    return exc


@pytest.mark.parametrize(("error", "said", "why"), [
    (redis.ResponseError(MISCONF, status_code="MISCONF"),
     "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
     "Redis cannot save to its disk"),
    (_in_pipeline(redis.ResponseError(MISCONF, status_code="MISCONF")),
     "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
     "Redis cannot save to its disk"),
    (redis.ResponseError("MISCONF Errors writing to the AOF file: No space left on device", status_code="MISCONF"),
     "MISCONF Errors writing to the AOF file: No space left on device", "Redis cannot save to its disk"),
    (redis.exceptions.OutOfMemoryError(OOM, status_code="OOM"),
     "OOM command not allowed when used memory > 'maxmemory'.", "Redis is out of memory (maxmemory)"),
    (_in_pipeline(redis.exceptions.OutOfMemoryError(f"{OOM} script: 219bb33e, on @user_script:1.", status_code="OOM")),
     "OOM command not allowed when used memory > 'maxmemory'.", "Redis is out of memory (maxmemory)"),
])
def test_redis_refusing_writes_is_a_full_store_saying_what_redis_said(error: redis.RedisError, said: str, why: str) -> None:
    errors = RedisErrors(fakeredis.FakeRedis(decode_responses=True))
    with pytest.raises(StoreFullError) as info, errors("record part 3"):
        raise error
    assert str(info.value).endswith(f": record part 3 refused: {said}"), str(info.value)
    assert info.value.why == why and "secret" not in str(info.value)


def test_other_redis_replies_stay_plain_store_errors() -> None:
    errors = RedisErrors(fakeredis.FakeRedis(decode_responses=True))
    for error in (redis.ResponseError("WRONGTYPE Operation against a key", status_code="WRONGTYPE"),
                  redis.exceptions.ReadOnlyError("You can't write against a read only replica.", status_code="READONLY")):
        with pytest.raises(StoreError) as info, errors("record part 3"):
            raise error
        assert type(info.value) is StoreError


def test_a_redis_refusing_even_ping_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """MISCONF refuses PING too; reads still work, so the store is there (its writes tell the rest)."""
    store = RedisStore(fakeredis.FakeRedis(decode_responses=True))

    def refused() -> None:
        raise redis.ResponseError(MISCONF, status_code="MISCONF")

    monkeypatch.setattr(store.client, "ping", refused)
    store.ping()


def test_the_outage_line_says_what_redis_refuses_and_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chunkd.store")
    health = StoreHealth()
    errors = RedisErrors(fakeredis.FakeRedis(decode_responses=True))
    with pytest.raises(StoreFullError) as info, errors("record part 3"):
        raise redis.exceptions.OutOfMemoryError(OOM, status_code="OOM")
    health.failed(info.value)
    health.ok()  # a read: writes are still refused
    assert health.refusing_writes is not None and "maxmemory" in health.refusing_writes
    health.ok(wrote=True)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("state store cannot write, Redis is out of memory (maxmemory) ("), lines
    assert "OOM command not allowed when used memory > 'maxmemory'." in lines[0]
    assert lines[1].startswith("state store writable again")
