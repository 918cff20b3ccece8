"""`redis+sentinel://` and `rediss://` state URLs: parsed, accepted by the config, and never shown
with their passwords (in errors, log lines, `chunkd doctor`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from redis.connection import SSLConnection
from redis.sentinel import SentinelConnectionPool

from chunkd.config import load_settings
from chunkd.errors import ConfigError, StoreError
from chunkd.observe.logs import redact
from chunkd.ops.doctor import check_store
from chunkd.store import open_store
from chunkd.store.redis import RedisStore
from chunkd.store.redis_errors import redact_redis_url
from chunkd.store.redis_sentinel import SentinelUrl, WatchedSentinel, parse_sentinel_url
from tests.support.redis_server import free_port

SECRET_URL = "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2:26380/mymaster/2?sentinel_password=sent1nel"


def test_a_sentinel_url_names_hosts_service_db_and_both_passwords() -> None:
    assert parse_sentinel_url(SECRET_URL) == SentinelUrl(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380)), service="mymaster", db=2,
        username="app", password="s3cret", sentinel_password="sent1nel",
    )
    plain = parse_sentinel_url("redis+sentinel://h1,h2:1234/svc")
    assert plain.sentinels == (("h1", 26379), ("h2", 1234)) and plain.db == 0 and plain.password is None
    assert parse_sentinel_url("rediss+sentinel://:pw@h:1/svc").ssl


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:1",  # no service
        "redis+sentinel://h:1/svc/zero",
        "redis+sentinel://h:port/svc",
        "redis+sentinel://h:1/svc/0?password=s3cret",  # the primary's password goes in the userinfo
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_sentinel_url(url)
    assert "s3cret" not in str(info.value)
    with pytest.raises(StoreError) as opened:
        open_store(url)
    assert "s3cret" not in str(opened.value)


def test_config_accepts_sentinel_and_tls_urls_and_refuses_a_bad_one(tmp_path: Path) -> None:
    base = {"CHUNKD_BUCKET": "chunkd", "CHUNKD_INPUT_DIR": str(tmp_path)}
    for url in (SECRET_URL, "rediss://:pw@redis.example:6380/0", "redis://localhost:6379/0"):
        assert load_settings(env={**base, "CHUNKD_STATE_URL": url}).state_url == url
    with pytest.raises(ConfigError) as info:
        load_settings(env={**base, "CHUNKD_STATE_URL": "redis+sentinel://:s3cret@h:1"})
    assert "s3cret" not in str(info.value) and "service" in str(info.value)
    with pytest.raises(ConfigError):
        load_settings(env={**base, "CHUNKD_STATE_URL": "memcached://h"})


def test_passwords_in_sentinel_urls_are_redacted_everywhere_they_are_shown() -> None:
    for shown in (redact(SECRET_URL), redact_redis_url(SECRET_URL), redact(f"state {SECRET_URL} down")):
        assert "s3cret" not in shown and "sent1nel" not in shown
        assert "10.0.0.1:26379,10.0.0.2:26380/mymaster/2" in shown


def test_an_unreachable_sentinel_store_errors_without_secrets() -> None:
    url = f"redis+sentinel://app:s3cret@127.0.0.1:{free_port()}/mymaster/0?sentinel_password=sent1nel"
    store = RedisStore.from_url(url)
    assert isinstance(store.client.connection_pool, SentinelConnectionPool)
    with pytest.raises(StoreError) as info:
        store.ping()
    message = str(info.value)
    assert "sentinel mymaster via 127.0.0.1" in message and "No master found" in message
    assert "s3cret" not in message and "sent1nel" not in message
    doctor = check_store(url)
    assert "s3cret" not in doctor.detail and "sent1nel" not in doctor.detail


def test_the_primary_changing_address_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([("10.0.0.1", 6379), ("10.0.0.1", 6379), ("10.0.0.2", 6379), ("10.0.0.2", 6379)])
    sentinel = WatchedSentinel([("127.0.0.1", free_port())])
    sentinel.sentinels[0].sentinel_masters = lambda: {  # type: ignore[method-assign]
        "mymaster": dict(zip(("ip", "port"), next(answers), strict=True)) | _healthy()
    }
    with caplog.at_level(logging.WARNING, logger="chunkd.store"):
        for _ in range(4):
            sentinel.discover_master("mymaster")
    changes = [r.getMessage() for r in caplog.records if "primary changed" in r.getMessage()]
    assert changes == ["state store primary changed from 10.0.0.1:6379 to 10.0.0.2:6379 (Sentinel failover of 'mymaster')"]
    assert sentinel.failovers == 1  # what the store's data mark counts: the daemon looks at every file again


def _healthy() -> dict[str, object]:
    return {"is_master": True, "is_sdown": False, "is_odown": False, "num-other-sentinels": 2}


def test_a_rediss_url_opens_a_tls_client_whose_errors_hide_the_password() -> None:
    store = RedisStore.from_url(f"rediss://:s3cret@127.0.0.1:{free_port()}/0?ssl_cert_reqs=required")
    assert issubclass(store.client.connection_pool.connection_class, SSLConnection)
    with pytest.raises(StoreError) as info:
        store.ping()
    assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)


TLS_URL = (
    "rediss+sentinel://:s3cret@h1:26379,h2:26379/mymaster/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    "&ssl_check_hostname=false&ssl_password=k3ypass&sentinel_ssl=true"
)


def test_a_sentinel_url_takes_the_tls_parameters_of_rediss_typed_as_redis_py_types_them() -> None:
    parsed = parse_sentinel_url(TLS_URL)
    assert parsed.ssl and parsed.sentinel_ssl
    assert parsed.tls == {
        "ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required", "ssl_check_hostname": False,
        "ssl_password": "k3ypass",
    }
    assert "k3ypass" in parsed.secrets  # the key's passphrase is scrubbed from errors like a password
    tls_primary_only = parse_sentinel_url("rediss+sentinel://h1/mymaster?ssl_ca_certs=/etc/ca.pem")
    assert tls_primary_only.ssl and not tls_primary_only.sentinel_ssl
    assert parse_sentinel_url("redis+sentinel://h1/mymaster?sentinel_ssl=yes&ssl_keyfile=/k").sentinel_ssl


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("ssl_ca_cert=/etc/ca.pem", "unknown sentinel URL parameter(s): ssl_ca_cert (it takes sentinel_password"),
        ("sentinel_ssl=maybe", "sentinel_ssl must be true or false"),
        ("ssl_min_version=tls13", "Invalid value for 'ssl_min_version'"),
    ],
)
def test_a_wrong_tls_parameter_is_refused_by_name_without_quoting_the_url(query: str, message: str) -> None:
    url = f"rediss+sentinel://:s3cret@h1:26379/mymaster/0?{query}"
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert message in str(info.value) and "s3cret" not in str(info.value), info.value


def test_tls_parameters_without_tls_are_refused() -> None:
    with pytest.raises(ValueError, match="ssl_ca_certs needs TLS: rediss"):
        parse_sentinel_url("redis+sentinel://h1:26379/mymaster/0?ssl_ca_certs=/etc/ca.pem")


def test_the_tls_parameters_reach_the_primary_and_with_sentinel_ssl_the_sentinels(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    hosts = f"127.0.0.1:{free_port()}"
    store = RedisStore.from_url(f"rediss+sentinel://{hosts}/mymaster/0?ssl_ca_certs={ca}&sentinel_ssl=true")
    pool = store.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert issubclass(pool.connection_class, SSLConnection) and pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    sentinel_pool = pool.sentinel_manager.sentinels[0].connection_pool
    assert issubclass(sentinel_pool.connection_class, SSLConnection)
    assert sentinel_pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    plain_sentinels = RedisStore.from_url(f"rediss+sentinel://{hosts}/mymaster/0?ssl_ca_certs={ca}").client
    assert not issubclass(plain_sentinels.connection_pool.sentinel_manager.sentinels[0].connection_pool.connection_class,
                          SSLConnection)
    store.close()


def test_a_sentinel_tls_file_that_is_not_there_is_named_at_open(tmp_path: Path) -> None:
    missing = tmp_path / "ca-typo.pem"
    with pytest.raises(StoreError) as info:
        RedisStore.from_url(f"rediss+sentinel://:s3cret@127.0.0.1:{free_port()}/mymaster/0?ssl_ca_certs={missing}")
    assert f"ssl_ca_certs={missing} is not a readable file" in str(info.value) and "s3cret" not in str(info.value)
