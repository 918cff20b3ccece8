"""Log output: JSON lines or text, with credentials removed from every line that leaves."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from chunkd.observe.logs import redact, setup_logging

SECRET_URL = "redis://:hunter2@h:6379"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """setup_logging replaces the root handlers; put pytest's (and everyone's) back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("botocore", "boto3", "urllib3", "s3transfer", "watchdog")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in noisy.items():
        logging.getLogger(name).setLevel(old)


def capture(fmt: str, level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream=stream)
    return stream


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- redact --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://user:pw@host", "redis://***@host"),
        ("redis://user:pw@host:6379/0", "redis://***@host:6379/0"),
        (SECRET_URL, "redis://***@h:6379"),
        ("http://u:p@h/x", "http://***@h/x"),
        ("rediss://token@cache.example:6380", "rediss://***@cache.example:6380"),
        ("connect to redis://a:b@one and http://c:d@two/", "connect to redis://***@one and http://***@two/"),
    ],
)
def test_redact_removes_url_userinfo(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "redis://host:6379/0",
        "http://h/x",
        "https://s3.example.com:9000/bucket/key.mp4",
        "sqlite:///.chunkd/state.db",
        "mail me at someone@example.com",
        "uploaded a.mp4 part 3 of 7",
    ],
)
def test_redact_leaves_text_without_secrets_unchanged(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("secret_key=abc", "abc"),
        ("aws_secret_access_key=wJalrXUtnFEMI", "wJalrXUtnFEMI"),
        ("password: xyz", "xyz"),
        ("PASSWORD=xyz", "xyz"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F&X-Amz-Signature=deadbeef01", "deadbeef01"),
        ("token=t0k3n, next", "t0k3n"),
    ],
)
def test_redact_masks_secret_parameters(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert "***" in redacted


def test_redact_keeps_the_parameter_name_and_the_rest() -> None:
    assert redact("secret_key=abc&region=eu") == "secret_key=***&region=eu"
    assert redact("password: xyz next") == "password: *** next"
    assert redact("?X-Amz-Signature=abc123&x=1") == "?X-Amz-Signature=***&x=1"


# --- setup_logging: JSON -------------------------------------------------------------------------


def test_json_output_is_one_object_per_line_with_the_standard_keys() -> None:
    stream = capture("json")
    log = logging.getLogger("chunkd.test")
    log.info("first")
    log.warning("second %s", "arg")

    lines = json_lines(stream)

    assert len(lines) == 2
    for line in lines:
        assert {"timestamp", "level", "logger", "event"} <= line.keys()
        assert line["logger"] == "chunkd.test"
    assert [(line["level"], line["event"]) for line in lines] == [("INFO", "first"), ("WARNING", "second arg")]


def test_json_output_carries_extra_fields() -> None:
    stream = capture("json")
    logging.getLogger("chunkd.test").info("part sent", extra={"stream_id": "abc123", "relpath": "sub/a.mp4", "part": 3})

    (line,) = json_lines(stream)

    assert line["stream_id"] == "abc123"
    assert line["relpath"] == "sub/a.mp4"
    assert line["part"] == 3


def test_json_timestamp_is_iso_8601_utc_with_its_zone() -> None:
    stream = capture("json")
    before = datetime.now(UTC)
    logging.getLogger("chunkd.test").info("hello")
    after = datetime.now(UTC)

    stamp = json_lines(stream)[0]["timestamp"]
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0), stamp  # zone given, and it is UTC
    assert stamp.endswith("Z")
    assert before - timedelta(milliseconds=1) <= parsed <= after


def test_text_timestamp_stays_local_wall_clock_time() -> None:
    stream = capture("text")
    logging.getLogger("chunkd.test").info("hello")
    assert re.match(r"\d\d:\d\d:\d\d INFO    hello$", stream.getvalue().strip())


def test_level_filters_lower_records() -> None:
    stream = capture("json", level="WARNING")
    log = logging.getLogger("chunkd.test")
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in json_lines(stream)] == ["shown"]


def test_setup_logging_replaces_earlier_handlers() -> None:
    first = capture("json")
    second = capture("json")
    logging.getLogger("chunkd.test").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_auto_format_is_json_when_not_a_terminal() -> None:
    stream = capture("auto")
    logging.getLogger("chunkd.test").info("hello")
    assert json_lines(stream)[0]["event"] == "hello"


# --- setup_logging: text -------------------------------------------------------------------------


def test_text_output_shows_message_level_and_context() -> None:
    stream = capture("text")
    logging.getLogger("chunkd.test").info("part sent", extra={"stream_id": "abc123", "relpath": "a.mp4"})
    line = stream.getvalue().strip()
    assert "INFO" in line
    assert "part sent" in line
    assert "stream_id=abc123" in line
    assert "relpath=a.mp4" in line


# --- secrets never leave -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_in_message_never_reaches_the_output(fmt: str) -> None:
    stream = capture(fmt)
    log = logging.getLogger("chunkd.test")
    log.warning(f"cannot reach {SECRET_URL}")
    log.warning("cannot reach %s", SECRET_URL)
    log.warning("cannot reach %(url)s", {"url": SECRET_URL})
    log.warning("state store", extra={"path": SECRET_URL, "key": "secret_key=hunter2"})

    output = stream.getvalue()
    assert output.count("\n") == 4
    assert "hunter2" not in output
    assert "h:6379" in output  # the host is still there to debug with


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_in_a_logged_exception_never_reaches_the_output(fmt: str) -> None:
    stream = capture(fmt)
    try:
        raise ConnectionError(f"Error connecting to {SECRET_URL}")
    except ConnectionError:
        logging.getLogger("chunkd.test").exception("store unreachable")

    output = stream.getvalue()
    assert "store unreachable" in output
    assert "ConnectionError" in output
    assert "hunter2" not in output


def test_args_are_formatted_before_redaction() -> None:
    # The filter folds args into the message; the result must still be the formatted text.
    stream = capture("json")
    logging.getLogger("chunkd.test").info("%d parts, %s", 3, "ok")
    assert json_lines(stream)[0]["event"] == "3 parts, ok"


def test_traceback_cached_unredacted_by_an_earlier_handler_is_redacted_for_ours() -> None:
    stream = capture("text")
    earlier = logging.StreamHandler(io.StringIO())  # renders and caches record.exc_text first
    logging.getLogger().handlers.insert(0, earlier)
    try:
        raise ConnectionError(f"Error connecting to {SECRET_URL}")
    except ConnectionError:
        logging.getLogger("chunkd.test").exception("store unreachable")

    assert "hunter2" in earlier.stream.getvalue()  # proves the cache was filled before our handler ran
    assert "ConnectionError" in stream.getvalue()
    assert "hunter2" not in stream.getvalue()
