"""Object keys rendered from a template."""

from __future__ import annotations

import calendar

import pytest

from chunkd.keys import FIELDS, render_key, validate_template

NOW = calendar.timegm((2026, 11, 23, 23, 59, 0))  # late in the UTC day: catches local-time dates


@pytest.mark.parametrize(
    ("template", "relpath", "expected"),
    [
        ("{relpath}", "cam1/2026/clip.mp4", "cam1/2026/clip.mp4"),
        ("{date}/{relpath}", "clip.mp4", "2026-11-23/clip.mp4"),
        ("{stem}", "cam1/clip.final.mp4", "clip.final"),
        ("{stem}.{ext}", "cam1/clip.MOV", "clip.MOV"),
        ("{hostname}/{relpath}", "a.mkv", "box-7/a.mkv"),
        ("{dir}/{stem}.mp4", "cam1/sub/clip.mov", "cam1/sub/clip.mp4"),
        ("videos/{dir}/{date}/{stem}.{ext}", "cam/x.ts", "videos/cam/2026-11-23/x.ts"),
    ],
)
def test_each_field(template: str, relpath: str, expected: str) -> None:
    assert render_key(template, relpath, now=NOW, hostname="box-7") == expected


def test_every_field_is_covered_above() -> None:
    assert FIELDS == {"relpath", "date", "stem", "ext", "hostname", "dir"}


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
    validate_template(template)


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
