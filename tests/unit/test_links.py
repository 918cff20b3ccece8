"""Links files: parsing, validation, the normalized dedup key, redaction and host safety (no network)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.links.parse import (
    INVALID_PORT,
    MALFORMED,
    AddressClass,
    LinkLine,
    _is_unsafe_char,
    _plainly_safe,
    address_problem,
    check_host,
    classify_address,
    normalize_url,
    parse_links,
    parse_links_bytes,
    redact_url,
)
from chunkd.links.reader import REJECTS_LOGGED, LinksFileReader, _RejectLog
from chunkd.links.report import ReportLine, _write_report
from tests.support.sizes import MiB

FILE_REFUSED = "scheme 'file' not allowed (only http and https)"


def resolver(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A fake DNS: names in the table resolve, any other name fails like getaddrinfo does."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return table[host]

    return resolve


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"an IP literal must be checked without resolving ({host})")


# --- the product spec's example ------------------------------------------------------------------

SPEC_LINKS = (
    "\ufeffhttps://videos.example.com/watch?v=abc123&t=10\n"  # line 1, after the BOM
    "# lectures for the archive\n"
    "\n"
    "http://media.example.org/talks/keynote.mp4\n"  # line 4
    "   \n"
    "https://cdn.example.net/clips/a.mkv  \n"  # line 6, trailing spaces
    "HTTPS://Videos.Example.COM:443/watch?v=abc123&t=10#t=30\n"  # line 7: line 1 again
    "file:///etc/passwd\n"  # line 8
    "   # an indented comment\n"
    "not a url at all\n"  # line 10
)


def test_the_spec_example_bytes_with_bom() -> None:
    lines = parse_links_bytes(SPEC_LINKS.encode("utf-8"))
    assert lines == [
        LinkLine(1, "https://videos.example.com/watch?v=abc123&t=10",
                 "https://videos.example.com/watch?v=abc123&t=10", None),
        LinkLine(4, "http://media.example.org/talks/keynote.mp4", "http://media.example.org/talks/keynote.mp4", None),
        LinkLine(6, "https://cdn.example.net/clips/a.mkv", "https://cdn.example.net/clips/a.mkv", None),
        LinkLine(7, "HTTPS://Videos.Example.COM:443/watch?v=abc123&t=10#t=30",
                 "https://videos.example.com/watch?v=abc123&t=10", None),
        LinkLine(8, "file:///etc/passwd", None, FILE_REFUSED),
        LinkLine(10, "not a url at all", None, MALFORMED),
    ]
    assert lines[3].url == lines[0].url  # the duplicate has the same dedup key
    assert len({line.url for line in lines if line.url}) == 3


def test_the_spec_example_as_text_and_with_crlf() -> None:
    assert parse_links(SPEC_LINKS) == parse_links_bytes(SPEC_LINKS.encode())
    assert parse_links(SPEC_LINKS.replace("\n", "\r\n")) == parse_links(SPEC_LINKS)


def test_line_numbers_count_only_real_line_breaks() -> None:
    # \f and U+2028 are not line breaks in an editor: the line is malformed, and numbering does not shift
    lines = parse_links("http://a.example/\u2028x\n\nhttp://b.example/\fy\nhttp://c.example/")
    assert [(line.lineno, line.error) for line in lines] == [(1, MALFORMED), (3, MALFORMED), (4, None)]


def test_undecodable_bytes_make_only_their_line_malformed() -> None:
    data = b"http://ok.example/1\nhttp://bad.example/\xff\xfe\nhttp://ok.example/3\n"
    lines = parse_links_bytes(data)
    assert [(line.lineno, line.url, line.error) for line in lines] == [
        (1, "http://ok.example/1", None),
        (2, None, MALFORMED),
        (3, "http://ok.example/3", None),
    ]


def test_empty_and_comment_only_files() -> None:
    assert parse_links("") == []
    assert parse_links_bytes(b"\xef\xbb\xbf") == []
    assert parse_links("# nothing\n\n   \n#http://a.example/\n") == []


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("file:///etc/passwd", FILE_REFUSED),
        ("FILE:///etc/passwd", FILE_REFUSED),
        ("javascript:alert(1)", "scheme 'javascript' not allowed (only http and https)"),
        ("data:text/html;base64,PHNjcmlwdD4=", "scheme 'data' not allowed (only http and https)"),
        ("ftp://ftp.example.com/video.mp4", "scheme 'ftp' not allowed (only http and https)"),
        ("gopher://x.example/", "scheme 'gopher' not allowed (only http and https)"),
        ("www.example.com/video.mp4", MALFORMED),  # no scheme
        ("example.com:8080/video.mp4", MALFORMED),  # a port, not a scheme
        ("//example.com/video.mp4", MALFORMED),
        ("http://", MALFORMED),  # no host
        ("http:///video.mp4", MALFORMED),
        ("http:example.com/video.mp4", MALFORMED),
        ("http://user@/x", MALFORMED),
        ("http://exa mple.com/", MALFORMED),  # spaces inside
        ("http://example.com/a b.mp4", MALFORMED),
        ("http://example.com/\x00", MALFORMED),  # control characters
        ("http://example.com/\x7f", MALFORMED),
        ("http://exa\u200bmple.com/", MALFORMED),  # zero-width space
        ("http://example.com/\u202egpm.exe", MALFORMED),  # bidi override
        ("http://example.com/" + "a" * 8192, MALFORMED),  # > 8 KiB
        ("http://example.com/" + "é" * 4090, MALFORMED),  # > 8 KiB as UTF-8
        ("http://evil.example\\@good.example/", MALFORMED),  # browsers read '\' as '/'
        ("http://a..b/", MALFORMED),
        ("http://" + "a" * 64 + ".com/", MALFORMED),  # a label longer than 63
        ("http://" + "a." * 127 + "a/", MALFORMED),  # a name longer than 253
        ("http://exa<mple.com/", MALFORMED),
        ("http://[::1/", MALFORMED),
        ("http://[fe80::1%25eth0]/", MALFORMED),
        ("http://[::1]x/", MALFORMED),
        ("http://::1/", MALFORMED),
        ("http://example.123/", MALFORMED),  # numeric last label must be an IPv4 address
        ("http://256.0.0.1/", MALFORMED),
        ("http://1.2.3.4.5/", MALFORMED),
        ("http://example.com:0/", INVALID_PORT),
        ("http://example.com:65536/", INVALID_PORT),
        ("http://example.com:http/", INVALID_PORT),
        ("http://example.com:-1/", INVALID_PORT),
        ("http://example.com:\u0661\u0662/", INVALID_PORT),  # Arabic-Indic digits
        ("http://example.com:80:80/", MALFORMED),
    ],
)
def test_rejected_lines(line: str, error: str) -> None:
    [parsed] = parse_links(line)
    assert (parsed.url, parsed.error) == (None, error)
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace(")", r"\)") + "$"):
        normalize_url(line)


def test_invalid_port_does_not_echo_what_may_be_a_password() -> None:
    [parsed] = parse_links("http://user:hunter2/x")
    assert parsed.error == INVALID_PORT and "hunter2" not in parsed.error


# --- normalization -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://EXAMPLE.COM", "http://example.com/"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:443/a", "http://example.com:443/a"),  # not the default for http
        ("https://example.com:80/a", "https://example.com:80/a"),
        ("http://example.com:08080/a", "http://example.com:8080/a"),
        ("http://example.com:/a", "http://example.com/a"),  # empty port: the default (RFC 3986)
        ("http://example.com/a#frag", "http://example.com/a"),
        ("http://example.com#frag", "http://example.com/"),
        ("http://example.com?b=2&a=1", "http://example.com/?b=2&a=1"),  # query order kept
        ("http://example.com/P/a%2Fb?Q=%41#x?y", "http://example.com/P/a%2Fb?Q=%41"),  # path and query as is
        ("http://example.com/a?", "http://example.com/a?"),
        ("http://User:PassWord@Example.com/a", "http://User:PassWord@example.com/a"),  # userinfo kept
        ("http://a@b@example.com/", "http://a@b@example.com/"),  # the last '@' ends userinfo
        ("http://@example.com/", "http://example.com/"),
        ("http://münchen.example/ä", "http://xn--mnchen-3ya.example/ä"),
        ("http://MÜNCHEN.example/", "http://xn--mnchen-3ya.example/"),
        ("http://ｅｘａｍｐｌｅ．com/", "http://example.com/"),  # fullwidth letters and dot
        ("http://under_score.example.com/", "http://under_score.example.com/"),
        ("http://example.com./", "http://example.com./"),
        ("http://[2001:DB8:0:0::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("https://[::1]:443/", "https://[::1]/"),
        ("http://[::FFFF:a9fe:a9fe]/", "http://[::ffff:169.254.169.254]/"),  # the same on every Python
        ("http://2130706433/", "http://127.0.0.1/"),  # numeric hosts as resolvers read them
        ("http://0x7f.1/", "http://127.0.0.1/"),
        ("http://0177.0.0.01/", "http://127.0.0.1/"),
        ("http://169.254.43518/", "http://169.254.169.254/"),
        ("http://１２７.0.0.1/", "http://127.0.0.1/"),  # fullwidth digits
        ("http://1.2.3.4./", "http://1.2.3.4/"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected


@pytest.mark.parametrize(
    "variant",
    [
        "https://videos.example.com/watch?v=1",
        "HTTPS://VIDEOS.EXAMPLE.COM/watch?v=1",
        "https://videos.example.com:443/watch?v=1",
        "https://videos.example.com/watch?v=1#t=30",
        "https://videos.example.com:/watch?v=1#",
    ],
)
def test_spellings_of_one_url_share_a_key(variant: str) -> None:
    assert normalize_url(variant) == "https://videos.example.com/watch?v=1"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://x.example/watch?v=1&t=2", "https://x.example/watch?t=2&v=1"),
        ("https://x.example/Video", "https://x.example/video"),
        ("http://x.example/", "https://x.example/"),
        ("https://u:p@x.example/", "https://x.example/"),
    ],
)
def test_different_urls_keep_different_keys(a: str, b: str) -> None:
    assert normalize_url(a) != normalize_url(b)


_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,20}[A-Za-z0-9])?", fullmatch=True).filter(
    # a numeric last label ("80", "0x1f", "0X") would make the host an IPv4 address (WHATWG)
    lambda label: not re.fullmatch(r"[0-9]+|0[xX][0-9A-Fa-f]*", label)
)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip.exploded.upper()}]"),
    st.text(st.characters(whitelist_categories=("Ll", "Lu", "Lo", "Nd")), min_size=1, max_size=15),
)
_URL_CHARS = st.characters(blacklist_categories=("C", "Z"), blacklist_characters="#?\\")
_URLS = st.builds(
    "{}://{}{}{}{}{}{}".format,
    st.sampled_from(["http", "https", "HTTP", "Https"]),
    st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9%!$&'()*+,;=:._~-]{0,12}@", fullmatch=True)),
    _HOSTS,
    st.one_of(st.just(""), st.just(":"), st.integers(1, 65535).map(":{}".format)),
    st.one_of(st.just(""), st.text(_URL_CHARS, max_size=30).map("/{}".format)),
    st.one_of(st.just(""), st.text(st.characters(blacklist_categories=("C", "Z"), blacklist_characters="#"),
                                   max_size=30).map("?{}".format)),
    st.one_of(st.just(""), st.text(_URL_CHARS, max_size=10).map("#{}".format)),
)


@settings(max_examples=300)
@given(_URLS)
def test_normalize_is_idempotent(url: str) -> None:
    try:
        once = normalize_url(url)
    except ValueError:
        return  # an invalid generated host (IDNA can refuse letters); rejection is tested elsewhere
    assert normalize_url(once) == once
    assert once.startswith(("http://", "https://")) and "#" not in once
    [line] = parse_links(url)
    assert (line.url, line.error) == (once, None)


@given(
    st.sampled_from(["http", "https"]),
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.text(_URL_CHARS, max_size=30),
)
def test_ascii_hostnames_always_normalize(scheme: str, host: str, path: str) -> None:
    assert normalize_url(f"{scheme}://{host}/{path}") == f"{scheme}://{host.lower()}/{path}"


def test_a_bare_hex_prefix_is_the_number_zero() -> None:
    """WHATWG reads "0x" as an IPv4 number with no digits, i.e. 0, as browsers do."""
    assert normalize_url("http://0X/") == "http://0.0.0.0/"
    assert normalize_url("http://1.0x/") == "http://1.0.0.0/"


@given(st.text())
def test_parse_never_raises_on_any_text(text: str) -> None:
    lines = parse_links(text)
    linenos = [line.lineno for line in lines]
    assert linenos == sorted(set(linenos))
    for line in lines:
        assert (line.url is None) != (line.error is None)
        assert line.raw and line.raw == line.raw.strip() and not line.raw.startswith("#")
        redact_url(line.raw)


@given(st.binary())
def test_parse_never_raises_on_any_bytes(data: bytes) -> None:
    for line in parse_links_bytes(data):
        assert (line.url is None) != (line.error is None)


@given(st.text(max_size=200))
def test_normalize_raises_only_value_error(text: str) -> None:
    try:
        normalized = normalize_url(text)
    except ValueError:
        return
    assert normalized.startswith(("http://", "https://")) and "#" not in normalized


# --- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:password@example.com/v.mp4", "https://***@example.com/v.mp4"),
        ("https://user:p@ss:w@rd@example.com/", "https://***@example.com/"),  # up to the last '@'
        ("https://token@example.com/", "https://***@example.com/"),
        ("https://example.com/a@b", "https://example.com/a@b"),  # '@' in the path is not userinfo
        ("https://example.com/v?token=abc&x=1", "https://example.com/v?token=***&x=1"),  # as logs.redact does
        ("https://example.com/v.mp4", "https://example.com/v.mp4"),
        ("not a url at all", "not a url at all"),
        ("see http://u:pw@a.example and HTTP://v:pw@b.example/", "see http://***@a.example and HTTP://***@b.example/"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redacted_normalized_url_keeps_the_rest() -> None:
    url = normalize_url("HTTPS://Alice:S3cret!@Example.COM:443/v.mp4?a=1#x")
    assert url == "https://Alice:S3cret!@example.com/v.mp4?a=1"
    assert redact_url(url) == "https://***@example.com/v.mp4?a=1"


def test_redact_url_cuts_an_overlong_line_after_removing_userinfo() -> None:
    shown = redact_url("http://user:" + "s" * 10_000 + "@example.com/")
    assert shown == "http://***@example.com/"
    shown = redact_url("http://example.com/" + "a" * 20_000)
    assert len(shown) <= 8 * 1024 + 1 and shown.endswith("…")


# --- host safety ---------------------------------------------------------------------------------

METADATA_LITERALS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::169.254.169.254]/",  # NAT64
    "http://[2002:a9fe:a9fe::1]/",  # 6to4
    "http://2852039166/",  # 169.254.169.254 as one number
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://100.100.100.200/",  # Alibaba Cloud
]


@pytest.mark.parametrize("url", METADATA_LITERALS)
@pytest.mark.parametrize("allow_private", [False, True])
def test_metadata_literals_are_always_refused(url: str, allow_private: bool) -> None:
    error = check_host(url, allow_private=allow_private, resolve=no_dns)
    assert error is not None and error.startswith("refused: link-local/metadata address ")


def test_metadata_message() -> None:
    error = check_host("http://169.254.169.254/", allow_private=True, resolve=no_dns)
    assert error == "refused: link-local/metadata address 169.254.169.254"
    error = check_host("http://[::ffff:169.254.169.254]/", allow_private=True, resolve=no_dns)
    assert error == "refused: link-local/metadata address ::ffff:169.254.169.254"


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "fe80::1%eth0", "::ffff:169.254.169.254"])
def test_a_name_resolving_to_metadata_is_always_refused(allow_private: bool, address: str) -> None:
    resolve = resolver({"metadata.attacker.example": [address]})
    error = check_host("http://metadata.attacker.example/x", allow_private=allow_private, resolve=resolve)
    assert error is not None and error.startswith("refused: link-local/metadata address ")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1/", "127.0.0.1"),
        ("http://127.8.9.10:8080/", "127.8.9.10"),
        ("http://10.0.0.5/", "10.0.0.5"),
        ("http://172.16.1.1/", "172.16.1.1"),
        ("http://192.168.1.10/", "192.168.1.10"),
        ("http://100.64.0.1/", "100.64.0.1"),  # carrier-grade NAT
        ("http://0.0.0.0/", "0.0.0.0"),
        ("http://224.0.0.1/", "224.0.0.1"),  # multicast
        ("http://240.0.0.1/", "240.0.0.1"),  # reserved
        ("http://255.255.255.255/", "255.255.255.255"),
        ("http://2130706433/", "127.0.0.1"),
        ("http://[::1]/", "::1"),
        ("http://[::]/", "::"),
        ("http://[fc00::1]/", "fc00::1"),
        ("http://[fd12:3456::1]/", "fd12:3456::1"),
        ("http://[ff02::1]/", "ff02::1"),
        ("http://[fec0::1]/", "fec0::1"),  # site-local
        ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1"),
        ("http://[::ffff:127.0.0.1]:8080/", "::ffff:127.0.0.1"),
    ],
)
def test_private_literals_need_allow_private(url: str, shown: str) -> None:
    error = check_host(url, allow_private=False, resolve=no_dns)
    assert error == f"refused: private address {shown} (set allow_private_urls to allow)"
    assert check_host(url, allow_private=True, resolve=no_dns) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/",
        "https://[2606:4700:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[64:ff9b::8.8.8.8]/",  # NAT64 spelling of a public address
    ],
)
def test_public_literals_pass(url: str) -> None:
    assert check_host(url, allow_private=False, resolve=no_dns) is None


def test_names_are_resolved_with_their_port() -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    assert check_host("https://Videos.Example.com/x", allow_private=False, resolve=resolve) is None
    assert check_host("http://videos.example.com:8080/x", allow_private=False, resolve=resolve) is None
    assert check_host("http://videos.example.com/x", allow_private=False, resolve=resolve) is None
    assert asked == [("videos.example.com", 443), ("videos.example.com", 8080), ("videos.example.com", 80)]


def test_localhost_and_private_names() -> None:
    resolve = resolver({"localhost": ["127.0.0.1", "::1"], "nas.lan": ["192.168.1.20"]})
    assert check_host("http://localhost:8000/", allow_private=False, resolve=resolve) == (
        "refused: private address 127.0.0.1 (set allow_private_urls to allow)"
    )
    assert check_host("http://localhost:8000/", allow_private=True, resolve=resolve) is None
    assert check_host("http://nas.lan/v.mp4", allow_private=False, resolve=resolve) == (
        "refused: private address 192.168.1.20 (set allow_private_urls to allow)"
    )
    assert check_host("http://nas.lan/v.mp4", allow_private=True, resolve=resolve) is None


@pytest.mark.parametrize(
    "addresses",
    [["93.184.215.14", "10.0.0.5"], ["10.0.0.5", "93.184.215.14"], ["2606:4700::1111", "10.0.0.5"]],
)
def test_one_private_address_among_public_ones_refuses_the_name(addresses: list[str]) -> None:
    resolve = resolver({"rebind.attacker.example": addresses})
    error = check_host("http://rebind.attacker.example/", allow_private=False, resolve=resolve)
    assert error == "refused: private address 10.0.0.5 (set allow_private_urls to allow)"
    assert check_host("http://rebind.attacker.example/", allow_private=True, resolve=resolve) is None


def test_metadata_is_reported_before_private() -> None:
    resolve = resolver({"mixed.example": ["10.0.0.5", "8.8.8.8", "169.254.169.254"]})
    error = check_host("http://mixed.example/", allow_private=False, resolve=resolve)
    assert error == "refused: link-local/metadata address 169.254.169.254"


def test_unresolvable_host() -> None:
    error = check_host("http://nowhere.invalid/", allow_private=False, resolve=resolver({}))
    assert error == "cannot resolve host nowhere.invalid (Name or service not known)"
    error = check_host("http://empty.example/", allow_private=False, resolve=resolver({"empty.example": []}))
    assert error == "cannot resolve host empty.example (no addresses)"


def test_garbage_from_the_resolver_is_refused() -> None:
    resolve = resolver({"odd.example": ["8.8.8.8", "not-an-ip"]})
    assert check_host("http://odd.example/", allow_private=True, resolve=resolve) == (
        "refused: unrecognized address 'not-an-ip'"
    )


def test_check_host_on_a_rejected_url_returns_the_reason() -> None:
    assert check_host("file:///etc/passwd", allow_private=True, resolve=no_dns) == FILE_REFUSED
    assert check_host("http://", allow_private=True, resolve=no_dns) == MALFORMED


def test_address_problem_and_classes() -> None:
    assert address_problem([], allow_private=False) is None
    assert classify_address(ipaddress.ip_address("8.8.8.8")) is AddressClass.PUBLIC
    assert classify_address(ipaddress.ip_address("10.1.2.3")) is AddressClass.PRIVATE
    assert classify_address(ipaddress.ip_address("169.254.169.254")) is AddressClass.METADATA
    assert classify_address(ipaddress.ip_address("::a9fe:a9fe")) is AddressClass.METADATA  # IPv4-compatible
    assert classify_address(ipaddress.ip_address("::8.8.8.8")) is AddressClass.PRIVATE  # deprecated form


# -- big and hostile links files -------------------------------------------------------------------


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40))
def test_the_ascii_shortcut_agrees_with_the_per_character_check(text: str) -> None:
    assert _plainly_safe(text) == (text.isascii() and not any(_is_unsafe_char(char) for char in text))


def test_parsing_time_grows_linearly_with_the_lines() -> None:
    line = "https://cdn.example.net/clips/{}.mp4\n# a comment\nnot a url {}\n"
    small = "".join(line.format(i, i) for i in range(1_000)).encode()
    big = "".join(line.format(i, i) for i in range(20_000)).encode()  # 60,000 lines

    def seconds(data: bytes) -> float:
        began = time.perf_counter()
        parse_links_bytes(data)
        return time.perf_counter() - began

    seconds(small)  # warm up
    assert len(parse_links_bytes(big)) == 40_000
    # 20 times the lines: linear is ~20 times the time, quadratic ~400 (slack for a busy machine).
    assert seconds(big) < 60 * max(seconds(small), 0.005) + 2.0


def test_rejected_lines_are_logged_once_the_first_ten_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chunkd.links")
    saved: list[tuple[int, int]] = []
    log = _RejectLog("big.links.txt", 0, 0, saved.append)
    for lineno in range(1, 26):
        log(lineno, "links file line %d rejected: %s", lineno, "malformed URL")
    log.close()
    messages = [record.getMessage() for record in caplog.records]
    assert messages[:REJECTS_LOGGED] == [f"links file line {n} rejected: malformed URL" for n in range(1, 11)]
    assert messages[REJECTS_LOGGED:] == [
        "links file: 15 more line(s) rejected or refused, not logged one by one (the report lists them)"
    ]
    assert saved == [(25, 10)]

    caplog.clear()
    again = _RejectLog("big.links.txt", *saved[-1], saved.append)  # the file read again after an append
    for lineno in range(1, 28):
        again(lineno, "links file line %d rejected: %s", lineno, "malformed URL")
    again.close()
    assert [record.getMessage() for record in caplog.records] == [
        "links file: 2 more line(s) rejected or refused, not logged one by one (the report lists them)"
    ]


def test_the_report_is_valid_json_one_entry_a_line_and_appears_whole(tmp_path: Path) -> None:
    entries = [ReportLine(n, f"https://a.example/{n}", "REJECTED", error="malformed URL") for n in range(1, 1001)]
    entries.append(ReportLine(1001, "https://a.example/1", "DUPLICATE", duplicate_of_line=1))
    target = tmp_path / "x.links.txt.report.json"
    _write_report(target, "x.links.txt", entries)
    body = json.loads(target.read_text())
    assert body["links_file"] == "x.links.txt" and len(body["lines"]) == 1001
    assert body["lines"][-1] == {"line": 1001, "url": "https://a.example/1", "state": "DUPLICATE", "key": None,
                                 "error": None, "duplicate_of_line": 1}
    assert len(target.read_text().splitlines()) == 1001 + 5
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "no temporary file left behind"
    _write_report(target, "empty.links.txt", [])
    assert json.loads(target.read_text()) == {"links_file": "empty.links.txt", "lines": []}


def test_a_links_file_over_the_size_limit_is_not_read_and_said_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="chunkd.links")
    reader = LinksFileReader(None, queue_url=lambda url, relpath: None, max_bytes=MiB)  # type: ignore[arg-type]
    path = tmp_path / "huge.links.txt"
    path.write_bytes(b"https://a.example/x.mp4\n" * 50_000)  # 1.2 MB
    assert reader.read_bounded(path, "huge.links.txt") is None
    assert reader.read_bounded(path, "huge.links.txt") is None
    assert [record.getMessage() for record in caplog.records] == [
        "links file is 1200000 bytes, more than the 1 MiB limit: not read; split it into smaller files"
    ]
    path.write_bytes(b"https://a.example/x.mp4\n")
    assert reader.read_bounded(path, "huge.links.txt") == b"https://a.example/x.mp4\n"


def test_the_settled_count_of_lines_not_uploaded_skips_duplicates_of_uploaded_urls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from chunkd.links.report import LinksFileSettler
    from chunkd.model.states import UrlRecord, UrlState

    links = tmp_path / "batch.links.txt"
    links.write_text("https://a.example/up.mp4\nhttps://a.example/up.mp4\nhttps://a.example/lost.mp4\n")
    os.utime(links, (time.time() - 60, time.time() - 60))
    first, _, third = parse_links_bytes(links.read_bytes())
    assert first.url is not None and third.url is not None
    records = {
        first.url: UrlRecord(first.url, first.url, "batch.links.txt", "up.mp4", state=UrlState.COMPLETED, key="up.mp4"),
        third.url: UrlRecord(third.url, third.url, "batch.links.txt", "lost.mp4", state=UrlState.FAILED),
    }
    engine = SimpleNamespace(
        input_dir=tmp_path, settings=SimpleNamespace(idle_seconds=1), store=SimpleNamespace(get_url=records.get)
    )
    settler = LinksFileSettler(engine, read_again=lambda *_: None, on_settled=lambda _: None)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="chunkd.links"):
        settler.settle(links, "batch.links.txt")
    assert "links file done: 3 line(s), 1 not uploaded" in caplog.messages
