"""Links files: which lines are URLs we may fetch, the one spelling of each URL, and whose host is safe.

Everything here is pure except `default_resolver`, and `check_host` takes its resolver as an argument,
so the whole module is tested without a network. Parsing and host safety are separate steps: a line
is accepted or rejected by what it says; whether its host may be contacted depends on DNS at the
time and on `allow_private_urls`, and is decided just before the URL is queued.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chunkd.observe.logs import redact

MAX_LINE_BYTES = 8 * 1024  # longer than any real video URL; keeps one line from becoming a memory sink
ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

MALFORMED = "malformed URL"
INVALID_PORT = "invalid port (must be 1 to 65535)"

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class LinkLine:
    lineno: int  # 1-based, as an editor shows it (a BOM does not make a line)
    raw: str  # the line, stripped: what a report shows (through `redact_url`) when it is rejected
    url: str | None  # normalized: also the dedup key; None when rejected
    error: str | None  # why it was rejected; None when accepted


# -- parsing -------------------------------------------------------------------------------------

_NEWLINE = re.compile(r"\r\n|\r|\n")  # not str.splitlines: \f, \x1c or U+2028 must not shift line numbers
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_PORT_ONLY = re.compile(r"[0-9]+(?:[/?#]|$)")  # "example.com:8080/x" is a host without a scheme
_DIGITS = re.compile(r"[0-9]+")
_HOST_CHARS = re.compile(r"[a-z0-9._\-]+")
_NUMBER_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")


def parse_links_bytes(data: bytes) -> list[LinkLine]:
    """Decode a links file as UTF-8 (BOM or not); a line with bytes that are not UTF-8 is malformed.

    Undecodable bytes become U+FFFD, which `parse_links` rejects, so one bad line does not cost the
    rest of the file.
    """
    return parse_links(data.decode("utf-8-sig", errors="replace"))


def parse_links(text: str) -> list[LinkLine]:
    """One URL per line; blank lines and `#` comments are skipped and not returned."""
    text = text.removeprefix("\ufeff")
    lines = []
    for lineno, line in enumerate(_NEWLINE.split(text), start=1):
        raw = line.strip()
        if not raw or raw.startswith("#"):
            continue
        try:
            lines.append(LinkLine(lineno, raw, normalize_url(raw), None))
        except ValueError as exc:  # also UnicodeError: any surprise is a bad line, not a bad file
            lines.append(LinkLine(lineno, raw, None, str(exc) if isinstance(exc, _Rejected) else MALFORMED))
    return lines


class _Rejected(ValueError):
    """A URL we will not take; its message is the short reason shown to the user."""


@dataclass(frozen=True)
class _Url:
    scheme: str
    userinfo: str | None
    host: str  # lowercase ASCII; an IPv6 literal without brackets
    port: int | None  # None for the scheme's default
    path: str
    query: str | None  # None when there is no '?': an empty query is kept, "as is" means as is

    def __str__(self) -> str:
        user = "" if self.userinfo is None else f"{self.userinfo}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        query = "" if self.query is None else f"?{self.query}"
        return f"{self.scheme}://{user}{host}{port}{self.path or '/'}{query}"


def normalize_url(url: str) -> str:
    """The one spelling of a URL, used as its dedup key; raises ValueError with the reason.

    Lowercase scheme and host (IDNA for non-ASCII hosts, numeric IPv4 forms as dotted quads), no
    default port, no fragment (never sent to the server), '/' for an empty path. The path and the
    query are kept byte for byte: some servers care about parameter order and escaping. Userinfo is
    kept because the download may need it; show URLs through `redact_url`.
    """
    return str(_split(url))


def _split(url: str) -> _Url:
    """Parse a stripped line strictly: anything a browser would have to guess at is malformed."""
    if len(url) > MAX_LINE_BYTES or len(url.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        raise _Rejected(MALFORMED)
    match = _SCHEME.match(url)
    if match is None:
        raise _Rejected(MALFORMED)
    scheme, rest = match.group(1).lower(), url[match.end() :]
    if scheme not in ALLOWED_SCHEMES:
        if _PORT_ONLY.match(rest):
            raise _Rejected(MALFORMED)
        raise _Rejected(f"scheme '{scheme[:20]}' not allowed (only http and https)")
    if not _plainly_safe(url) and any(_is_unsafe_char(char) for char in url):
        raise _Rejected(MALFORMED)
    if not rest.startswith("//"):
        raise _Rejected(MALFORMED)  # "http:example.com", "http:/x": no authority
    rest = rest[2:]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    rest = rest.partition("#")[0]
    path, question, query = rest.partition("?")
    userinfo, at, hostport = authority.rpartition("@")
    if "\\" in authority:
        raise _Rejected(MALFORMED)  # WHATWG parsers read '\' as '/': the host would differ from ours
    host, port = _split_hostport(hostport)
    return _Url(
        scheme=scheme,
        userinfo=userinfo if at and userinfo else None,  # "http://@host/" is "http://host/"
        host=host,
        port=None if port == DEFAULT_PORTS[scheme] else port,
        path=path,
        query=query if question else None,
    )


def _plainly_safe(url: str) -> bool:
    """The common case, decided without a Unicode lookup per character: printable ASCII, no space."""
    return url.isascii() and url.isprintable() and " " not in url


def _is_unsafe_char(char: str) -> bool:
    """Whitespace, control and format characters (zero-width, bidi overrides) and U+FFFD."""
    return char == "\ufffd" or unicodedata.category(char)[0] in "CZ"


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        literal, bracket, port_part = hostport[1:].partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            raise _Rejected(MALFORMED)
        try:
            host = _ip_text(ipaddress.IPv6Address(literal)) if "%" not in literal else ""
        except ValueError:
            host = ""  # zone ids and IPvFuture are no use in a links file
        if not host:
            raise _Rejected(MALFORMED)
        return host, _parse_port(port_part[1:] if port_part else "")
    host, colon, port = hostport.partition(":")
    if "[" in hostport or "]" in hostport or (colon and ":" in port):
        raise _Rejected(MALFORMED)
    return _normalize_host(host), _parse_port(port)


def _parse_port(port: str) -> int | None:
    """An empty port ("host:/") means the default, as RFC 3986 says."""
    if not port:
        return None
    if len(port) > 5 or not _DIGITS.fullmatch(port) or not 0 < int(port) <= 65535:
        raise _Rejected(INVALID_PORT)  # not echoed: in "http://user:secret/x" the "port" is a password
    return int(port)


def _normalize_host(host: str) -> str:
    if not host:
        raise _Rejected(MALFORMED)
    if not host.isascii():
        # The stdlib's IDNA 2003, as yt-dlp uses: the host we check is the host it connects to (IDNA
        # 2008 would keep "ß" where this spells "ss"). It also maps fullwidth digits and dots to ASCII.
        try:
            host = host.lower().encode("idna").decode("ascii")
        except UnicodeError:
            raise _Rejected(MALFORMED) from None
    host = host.lower()
    ipv4 = _numeric_ipv4(host)
    if ipv4 is not None:
        return str(ipv4)
    name = host.removesuffix(".")  # one trailing dot: the fully qualified spelling
    labels = name.split(".")
    if not _HOST_CHARS.fullmatch(host) or len(name) > 253 or not all(0 < len(label) <= 63 for label in labels):
        raise _Rejected(MALFORMED)
    return host


def _ip_text(address: IPAddress) -> str:
    """Python 3.13 changed how str() spells IPv4-mapped IPv6; a dedup key must not change with it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read "2130706433", "0x7f.1" or "0177.0.0.1" as the IPv4 address resolvers and browsers see.

    Left as names, they would be different dedup keys for one address and would reach the resolver
    instead of being checked as literals. As in the WHATWG URL standard, a host whose last label is
    a number must be an IPv4 address.
    """
    parts = host.removesuffix(".").split(".")
    if not _NUMBER_LABEL.fullmatch(parts[-1]):
        return None
    if len(parts) > 4:
        raise _Rejected(MALFORMED)
    numbers = [_ipv4_number(part) for part in parts]
    last = numbers.pop()
    if any(n > 255 for n in numbers) or last >= 256 ** (4 - len(numbers)):
        raise _Rejected(MALFORMED)
    value = last
    for i, n in enumerate(numbers):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int:
    if len(part) > 12:  # longer than any 32-bit number in any base this accepts
        raise _Rejected(MALFORMED)
    try:
        if part[:2] in ("0x", "0X"):
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10)
    except ValueError:
        raise _Rejected(MALFORMED) from None


# -- showing ------------------------------------------------------------------------------------

# Up to the *last* '@' of the authority: "http://user:p@ss@host" must not leave "ss@" behind. The
# lookbehind starts a scheme only where a word starts, which keeps a long rejected line linear.
_URL_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\\\s]*@")


def redact_url(url: str) -> str:
    """A URL (or any rejected line) safe to log and to write into a report: no password, no token.

    Userinfo becomes `***@`; then `chunkd.observe.logs.redact` hides secret query parameters the way every
    other log line does. Never raises, whatever the line; a line longer than any URL we accept is
    cut (after its userinfo is gone, so the cut cannot expose part of a password).
    """
    text = _URL_USERINFO.sub(r"\g<scheme>***@", url)
    if len(text) > MAX_LINE_BYTES:
        text = text[:MAX_LINE_BYTES] + "…"
    return redact(text)


# -- host safety --------------------------------------------------------------------------------


class AddressClass(enum.IntEnum):
    """Worse is larger, so the worst of several addresses is `max()`."""

    PUBLIC = 0
    PRIVATE = 1  # loopback, private, unspecified, multicast, reserved: allowed with allow_private_urls
    METADATA = 2  # link-local and cloud metadata: never, since that is where instance credentials live


_METADATA_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata at 169.254.169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud Classic metadata
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def classify_address(address: IPAddress) -> AddressClass:
    """How dangerous it is to connect to this address; IPv6 forms that carry an IPv4 address are
    judged by it as well (::ffff:169.254.169.254 is the metadata service)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return classify_address(address.ipv4_mapped)
        if address in _NAT64:  # only a spelling of an IPv4 address on an IPv6-only network
            return classify_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        embedded = [address.sixtofour] if address.sixtofour else []
        embedded += list(address.teredo or ())
        if address in _IPV4_COMPATIBLE and int(address) > 1:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return max([_classify_one(address), *(classify_address(ip) for ip in embedded)])
    return _classify_one(address)


def _classify_one(address: IPAddress) -> AddressClass:
    if any(address in net for net in _METADATA_NETWORKS if net.version == address.version):
        return AddressClass.METADATA
    if (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_unspecified
        or address.is_multicast  # is_global is True for most multicast
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    ):
        return AddressClass.PRIVATE
    return AddressClass.PUBLIC


def address_problem(addresses: Iterable[str], *, allow_private: bool) -> str | None:
    """Why these addresses must not be contacted, or None. One bad address refuses them all.

    A name that resolves to a public and a private address could be answered either way at connect
    time, so the worst address decides. Metadata is reported before private.
    """
    worst: tuple[AddressClass, str] | None = None
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.partition("%")[0])  # drop an IPv6 zone id
        except ValueError:
            return f"refused: unrecognized address '{text[:60]}'"
        found = classify_address(address)
        if worst is None or found > worst[0]:
            worst = (found, _ip_text(address))
    if worst is None:
        return None
    found, shown = worst
    if found is AddressClass.METADATA:
        return f"refused: link-local/metadata address {shown}"
    if found is AddressClass.PRIVATE and not allow_private:
        return f"refused: private address {shown} (set allow_private_urls to allow)"
    return None


def default_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host:port over TCP, in its order, once each."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_host(url: str, *, allow_private: bool, resolve: Resolver = default_resolver) -> str | None:
    """Why the URL's host must not be contacted, or None when it may be.

    An IP literal is checked as is; a name is resolved and every address it gives must pass. This
    answers for the addresses seen *now*: DNS may answer differently a moment later (DNS rebinding),
    so the downloader must connect to an address checked here or check the address it connects to
    again (`address_problem`) — redirects included, since each names a new host.
    """
    try:
        parts = _split(url.strip())
    except _Rejected as exc:
        return str(exc)
    except ValueError:
        return MALFORMED
    if _is_ip_literal(parts.host):
        return address_problem([parts.host], allow_private=allow_private)
    try:
        addresses = resolve(parts.host, parts.port or DEFAULT_PORTS[parts.scheme])
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"cannot resolve host {parts.host}" + (f" ({reason})" if reason else "")
    if not addresses:
        return f"cannot resolve host {parts.host} (no addresses)"
    return address_problem(addresses, allow_private=allow_private)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
