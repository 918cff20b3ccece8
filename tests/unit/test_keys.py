"""Object keys rendered from a template."""

from __future__ import annotations

import calendar
import os
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkd.intake.paths import escape_name
from chunkd.model.keys import FIELDS, key_problem, render_key, validate_template

NOW = calendar.timegm((2026, 11, 23, 23, 59, 0))  # late in the UTC day: catches local-time dates


@pytest.mark.parametrize(
    ("template", "relpath", "expected"),
    [
        ("{relpath}", "cam1/2026/clip.mp4", "cam1/2026/clip.mp4"),
        ("{date}/{relpath}", "clip.mp4", "2026-11-23/clip.mp4"),
        ("{stem}", "cam1/clip.final.mp4", "clip.final"),
        ("{stem}.{ext}", "cam1/clip.MOV", "clip.MOV"),
        ("{hostname}/{relpath}", "a.mkv", "box-7/a.mkv"),
        ("{node}/{relpath}", "cam1/a.mkv", "box-7/cam1/a.mkv"),  # CHUNKD_NODE defaults to the hostname
        ("{dir}/{stem}.mp4", "cam1/sub/clip.mov", "cam1/sub/clip.mp4"),
        ("videos/{dir}/{date}/{stem}.{ext}", "cam/x.ts", "videos/cam/2026-11-23/x.ts"),
    ],
)
def test_each_field(template: str, relpath: str, expected: str) -> None:
    assert render_key(template, relpath, now=NOW, hostname="box-7") == expected


def test_every_field_is_covered_above() -> None:
    assert FIELDS == {"relpath", "date", "stem", "ext", "hostname", "node", "dir"}


@pytest.mark.parametrize(
    ("template", "relpath", "expected"),
    [
        ("{dir}/{relpath}", "top.mp4", "top.mp4"),  # empty {dir} leaves no leading '/'
        ("/{relpath}", "a/b.mp4", "a/b.mp4"),
        ("prefix//{relpath}", "b.mp4", "prefix/b.mp4"),
        ("{dir}//{stem}", "a/b.mp4", "a/b"),
        ("{relpath}/", "b.mp4", "b.mp4"),
        ("x///{dir}///{stem}", "d/e/f.mp4", "x/d/e/f"),
    ],
)
def test_empty_segments_and_leading_slash_are_collapsed(template: str, relpath: str, expected: str) -> None:
    key = render_key(template, relpath, now=NOW, hostname="h")
    assert key == expected
    assert "//" not in key and not key.startswith("/")


def test_date_defaults_to_now_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: NOW)
    assert render_key("{date}/{stem}", "a.mp4", hostname="h") == "2026-11-23/a"


def test_hostname_defaults_to_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "from-socket")
    assert render_key("{hostname}/{stem}", "a.mp4", now=NOW) == "from-socket/a"


def test_file_without_extension() -> None:
    assert render_key("{stem}|{ext}", "dir/README", now=NOW, hostname="h") == "README|"


@pytest.mark.parametrize("template", ["{relpath}", "{stem}", "{date}/{hostname}/{dir}/{stem}.{ext}", "x/{relpath}"])
def test_valid_templates(template: str) -> None:
    validate_template(template)  # raises ValueError for a bad one
    keys = {render_key(template, relpath, now=NOW, hostname="h") for relpath in ("d/a.mp4", "d/b.mp4")}
    assert len(keys) == 2, "a valid template gives two files two keys"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{path}", "unknown field {path}"),
        ("{}", "unknown field"),
        ("{0}", "unknown field"),
        ("{relpath.upper}", "unknown field"),
        ("{relpath:>20}", "format spec"),
        ("{stem!r}", "format spec or conversion"),
        ("{date}/{hostname}", "must contain {relpath} or {stem}"),
        ("static-key", "must contain {relpath} or {stem}"),
        ("{relpath", "'}'"),
    ],
)
def test_validate_template_errors(template: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_template(template)
    assert message in str(info.value)


# --- hostile names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "relpath", "expected"),
    [
        ("{relpath}", "caf%E9/new%0Aline.mp4", "caf%E9/new%0Aline.mp4"),  # already escaped: kept as is
        ("{relpath}", "fifty %2520.mp4", "fifty %2520.mp4"),  # a '%' escaped once stays escaped once
        ("{stem}/{ext}", "a/b%FF.mp4", "b%FF/mp4"),
        ("../{relpath}", "a.mp4", "%2E%2E/a.mp4"),  # a template cannot climb out of a mirror's folder
        ("./x/./{relpath}", "a.mp4", "%2E/x/%2E/a.mp4"),
        ("{dir}/../{stem}", "d/a.mp4", "d/%2E%2E/a"),
        ("tab\there/{relpath}", "a.mp4", "tab%09here/a.mp4"),  # a control character from the template
        ("{hostname}/{relpath}", "a.mp4", "bad%0Ahost%2Fname/a.mp4"),
    ],
)
def test_keys_are_safe_whatever_the_template_and_name(template: str, relpath: str, expected: str) -> None:
    assert render_key(template, relpath, now=NOW, hostname="bad\nhost/name") == expected


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b), st.integers(0, 3))
def test_the_default_key_is_the_escaped_relpath_and_gives_the_bytes_back(name: bytes, depth: int) -> None:
    relpath = "/".join([escape_name(os.fsdecode(name))] * (depth + 1))
    key = render_key("{relpath}", relpath, now=NOW, hostname="h")
    if not any(segment in (".", "..") for segment in relpath.split("/")):
        assert key == relpath
        assert unquote_to_bytes(key) == b"/".join([name] * (depth + 1))
    assert all(segment not in ("", ".", "..") for segment in key.split("/"))
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in key)
    key.encode("utf-8")


def test_a_key_longer_than_s3_allows_is_named_before_any_upload() -> None:
    deep = "d/" * 520 + "clip.mp4"
    assert key_problem(render_key("{relpath}", deep, now=NOW, hostname="h")) == (
        "object key is 1048 bytes long; S3 allows at most 1024"
    )
    assert key_problem("é" * 512) is None and key_problem("é" * 513) is not None  # bytes, not characters
