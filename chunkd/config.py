"""Settings: defaults < CHUNKD_* environment < TOML file (--config) < command-line flags.

Every setting has one name; the environment variable is CHUNKD_<NAME>, the TOML key is <name> and
the flag is --<name-with-dashes>. A bad value raises ConfigError naming the setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chunkd.errors import ConfigError
from chunkd.model import attributes as attrs
from chunkd.model.node import Scope, default_node, validate_node
from chunkd.model.planner import MAX_PART_SIZE, MIN_PART_SIZE
from chunkd.pipeline.buffers import DEFAULT_BUFFER_MEMORY

DEFAULT_INCLUDE = ("*.mp4", "*.mov", "*.mkv", "*.webm", "*.m4v", "*.ts", "*.avi")
DEFAULT_STATE_URL = "sqlite:///.chunkd/state.db"

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
PRESIGN_MAX_SECONDS = 7 * 24 * 3600
SSE_C_KEY_BYTES = 32  # AES-256
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_size(text: str | int) -> int:
    """'8MiB', '5 MB', '1048576' -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 8MiB, 16MB, 8388608)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _parse_list(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(str(item) for item in text)
    return tuple(part for part in re.split(r"[\s,]+", text) if part)


def _parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_switch(text: str | bool) -> str:
    """auto | on | off (booleans as on/off)."""
    if isinstance(text, bool) or str(text).strip().lower() != "auto":
        return "on" if _parse_bool(text) else "off"
    return "auto"


def _positive_int(text: str | int) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str | float) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def _presign_seconds(text: str | int) -> int:
    """0 (off) up to 7 days, SigV4's limit on a presigned URL's lifetime."""
    value = int(text)
    if not 0 <= value <= PRESIGN_MAX_SECONDS:
        raise ValueError(f"must be 0 (off) to {PRESIGN_MAX_SECONDS} (7 days, SigV4's limit), got {value}")
    return value


def _optional_str(text: str | None) -> str | None:
    return str(text) if text not in (None, "") else None


def _parse_addr(text: str) -> str:
    """'host:port', or '' to turn the HTTP endpoint off."""
    text = text.strip()
    if not text:
        return ""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {text!r} (example: 127.0.0.1:8765; empty to disable)")
    return f"{host or '127.0.0.1'}:{port}"


def _parse_priority(text: str | list[str] | tuple[object, ...]) -> tuple[tuple[str, int], ...]:
    """'urgent/**=10, *.mov=5' -> (("urgent/**", 10), ("*.mov", 5)); the first matching rule wins."""
    if isinstance(text, tuple) and all(isinstance(item, tuple) for item in text):
        return text  # type: ignore[return-value]
    rules = []
    for item in _parse_list(text if not isinstance(text, tuple) else [str(t) for t in text]):
        glob, sep, value = item.rpartition("=")
        if not sep or not glob:
            raise ValueError(f"priority rule {item!r} is not GLOB=INTEGER")
        rules.append((glob, int(value)))
    return tuple(rules)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


@dataclass(frozen=True)
class Settings:
    input_dir: Path = Path("./input")
    create_input_dir: bool | None = None  # None: true under --dev, else false (an unmounted share stays empty)
    require_mount: bool = False  # doctor: the input folder must be on a mounted filesystem, not the root one
    bucket: str = "chunkd"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None  # None: boto3's chain (AWS_REGION, AWS_DEFAULT_REGION, profile)
    s3_addressing_style: str = "auto"
    s3_ca_bundle: Path | None = None  # None: AWS_CA_BUNDLE, else the system's
    s3_verify_tls: bool = True
    sse_c_key_file: Path | None = None
    presign_seconds: int = 0
    state_url: str = DEFAULT_STATE_URL
    node: str = ""  # this daemon's name in a fleet (chunkd.model.node); empty: the hostname (`node_name`)
    shared_input: bool = False  # the input folder is shared by several daemons: relpath alone names a file
    key_template: str = "{relpath}"
    part_size: int = 8 * 1024 * 1024
    part_schedule: str = "growing"
    file_concurrency: int = 4
    part_concurrency: int = 4
    idle_seconds: float = 10.0
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()
    manifest_suffix: str = ".manifest.json"
    bandwidth_limit: int = 0
    buffer_memory: int = DEFAULT_BUFFER_MEMORY
    rescan_seconds: float = 60.0
    poll_seconds: float = 0.5
    max_attempts: int = 8
    shutdown_timeout: float = 30.0
    log_level: str = "INFO"
    log_format: str = "auto"
    invalid_media: str = "quarantine"
    thumbnail: bool = True  # a poster frame beside every valid video (chunkd.pipeline.thumbnail)
    quarantine_dir: Path | None = None
    dedup: str = "copy"
    after_upload: str = "keep"
    done_dir: Path | None = None
    http_addr: str = "127.0.0.1:8765"
    http_token: str | None = None
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    events_maxlen: int = 100_000
    priority: tuple[tuple[str, int], ...] = ()
    gc_hours: float = 24.0
    retention_days: float = 30.0
    expire_records: bool = False  # the daemon expires its node's finished records past retention_days, hourly
    links_pattern: tuple[str, ...] = ("links.txt", "*.links.txt")
    allow_private_urls: bool = False
    download_concurrency: int = 2
    download_host_requests: int = 30
    download_host_window: float = 60.0
    download_proxy: str | None = None
    max_download_size: int = 0
    min_free_gb: float = 0.0
    staging_dir: Path | None = None
    lease_seconds: float = 30.0
    breaker_failures: int = 5
    breaker_cooldown: float = 5.0
    content_md5: str = "auto"
    overwrite: bool = False  # a file may replace another file's object (key collisions)
    # The object's attributes (chunkd.model.attributes), fixed when its upload is created.
    content_type: str = "auto"
    cache_control: str | None = None
    content_disposition: str | None = None
    metadata: attrs.Pairs = ()
    tags: attrs.Pairs = ()
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    sse_bucket_key: bool | None = None
    acl: str | None = None

    @property
    def attributes(self) -> attrs.AttributeSettings:
        """A KMS key alone means aws:kms (`aws s3 cp --sse-kms-key-id` needs `--sse aws:kms` too); an
        S3 Bucket Key goes only with KMS encryption."""
        sse = self.sse or ("aws:kms" if self.sse_kms_key_id else None)
        kms = sse in ("aws:kms", "aws:kms:dsse")
        return attrs.AttributeSettings(
            content_type=self.content_type, cache_control=self.cache_control,
            content_disposition=self.content_disposition, metadata=self.metadata, tags=self.tags,
            storage_class=self.storage_class, sse=sse, sse_kms_key_id=self.sse_kms_key_id,
            sse_bucket_key=self.sse_bucket_key if kms else None, acl=self.acl,
        )

    @property
    def node_name(self) -> str:
        """CHUNKD_NODE, else the hostname."""
        return self.node or default_node()

    @property
    def scope(self) -> Scope:
        """The stream records this daemon's folder holds and the leases its jobs take."""
        return Scope.of(
            self.node_name, shared_input=self.shared_input, single_box=self.state_url.startswith("sqlite:")
        )

    @property
    def fixed_parts(self) -> bool:
        return self.part_schedule == "fixed"

    @property
    def quarantine_path(self) -> Path:
        """Default inside the drop folder, under a dot-name the watcher never looks at."""
        return (self.quarantine_dir or self.input_dir / ".quarantine").resolve()

    @property
    def staging_path(self) -> Path:
        """Downloads land here first; a dot-name inside the drop folder the watcher never looks at."""
        return (self.staging_dir or self.input_dir / ".staging").resolve()

    @property
    def done_path(self) -> Path:
        """Default beside the drop folder, so moved files are not picked up again."""
        return (self.done_dir or self.input_dir.resolve().parent / "done").resolve()


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "input_dir": lambda v: Path(v).expanduser(),
    "create_input_dir": _parse_bool,
    "require_mount": _parse_bool,
    "bucket": str,
    "s3_endpoint_url": _optional_str,
    "s3_region": _optional_str,
    "s3_addressing_style": _choice("auto", "path", "virtual"),
    "s3_ca_bundle": lambda v: Path(v).expanduser() if v else None,
    "s3_verify_tls": _parse_bool,
    "sse_c_key_file": lambda v: Path(v).expanduser() if v else None,
    "presign_seconds": _presign_seconds,
    "state_url": str,
    "node": lambda v: validate_node(str(v).strip()) if str(v).strip() else "",
    "shared_input": _parse_bool,
    "key_template": str,
    "part_size": parse_size,
    "part_schedule": _choice("growing", "fixed"),
    "file_concurrency": _positive_int,
    "part_concurrency": _positive_int,
    "idle_seconds": _non_negative_float,
    "include": _parse_list,
    "exclude": _parse_list,
    "manifest_suffix": str,
    "bandwidth_limit": parse_size,
    "buffer_memory": parse_size,
    "rescan_seconds": _non_negative_float,
    "poll_seconds": _non_negative_float,
    "max_attempts": _positive_int,
    "shutdown_timeout": _non_negative_float,
    "log_level": lambda v: _choice("DEBUG", "INFO", "WARNING", "ERROR")(str(v).upper()),
    "log_format": _choice("auto", "text", "json"),
    "invalid_media": _choice("quarantine", "upload"),
    "thumbnail": _parse_bool,
    "quarantine_dir": lambda v: Path(v).expanduser() if v else None,
    "dedup": _choice("copy", "record", "off"),
    "after_upload": _choice("keep", "delete", "move"),
    "done_dir": lambda v: Path(v).expanduser() if v else None,
    "http_addr": lambda v: _parse_addr(str(v)),
    "http_token": _optional_str,
    "webhook_urls": _parse_list,
    "webhook_secret": _optional_str,
    "events_maxlen": _positive_int,
    "priority": lambda v: _parse_priority(v),
    "gc_hours": _non_negative_float,
    "retention_days": _non_negative_float,
    "expire_records": _parse_bool,
    "links_pattern": _parse_list,
    "allow_private_urls": _parse_bool,
    "download_concurrency": _positive_int,
    "download_host_requests": _positive_int,
    "download_host_window": _non_negative_float,
    "download_proxy": _optional_str,
    "max_download_size": parse_size,
    "min_free_gb": _non_negative_float,
    "staging_dir": lambda v: Path(v).expanduser() if v else None,
    "lease_seconds": _non_negative_float,
    "breaker_failures": _positive_int,
    "breaker_cooldown": _non_negative_float,
    "content_md5": lambda v: _parse_switch(v),
    "overwrite": _parse_bool,
    "content_type": attrs.parse_content_type,
    "cache_control": _optional_str,
    "content_disposition": attrs.parse_template,
    "metadata": attrs.parse_metadata,
    "tags": attrs.parse_tags,
    "storage_class": attrs.parse_storage_class,
    "sse": attrs.parse_sse,
    "sse_kms_key_id": _optional_str,
    "sse_bucket_key": _parse_bool,
    "acl": attrs.parse_acl,
}

SETTING_NAMES: tuple[str, ...] = tuple(_PARSERS)


def env_name(name: str) -> str:
    return f"CHUNKD_{name.upper()}"


def load_settings(
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge every source in precedence order and validate the result."""
    env = os.environ if env is None else env
    raw: dict[str, tuple[str, Any]] = {}
    for name in SETTING_NAMES:
        if env_name(name) in env:
            raw[name] = (env_name(name), env[env_name(name)])
    config_file = config_file or env.get("CHUNKD_CONFIG")
    if config_file:
        for name, value in _read_toml(Path(config_file)).items():
            raw[name] = (f"{config_file}: {name}", value)
    for name, value in (overrides or {}).items():
        if value is not None:
            raw[name] = (f"--{name.replace('_', '-')}", value)
    values: dict[str, Any] = {}
    for name, (source, value) in raw.items():
        try:
            values[name] = _PARSERS[name](value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(source, str(exc)) from None
    settings = Settings(**values)
    _validate(settings, {name: source for name, (source, _) in raw.items()})
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    table: dict[str, Any] = data.get("chunkd", data)
    unknown = sorted(set(table) - set(SETTING_NAMES))
    if unknown:
        raise ConfigError("--config", f"unknown setting(s) in {path}: {', '.join(unknown)}")
    return table


def _validate(settings: Settings, sources: Mapping[str, str]) -> None:
    def where(name: str) -> str:
        return sources.get(name, env_name(name))

    if not MIN_PART_SIZE <= settings.part_size <= MAX_PART_SIZE:
        raise ConfigError(where("part_size"), "must be between 5MiB and 5GiB (S3's part limits)")
    if settings.buffer_memory and settings.buffer_memory < MIN_PART_SIZE:
        raise ConfigError(where("buffer_memory"), "must be 0 (every part streamed from the file) or at least 5MiB")
    if not _BUCKET_RE.match(settings.bucket):
        raise ConfigError(where("bucket"), f"{settings.bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    if settings.s3_endpoint_url and not re.match(r"^https?://[^/\s]+", settings.s3_endpoint_url):
        raise ConfigError(where("s3_endpoint_url"), "must look like http://host:port or https://host")
    _validate_state_url(settings.state_url, where("state_url"))
    if settings.lease_seconds < 2:
        raise ConfigError(where("lease_seconds"), "must be at least 2 seconds (leases are renewed every third of it)")
    if not settings.manifest_suffix:
        raise ConfigError(where("manifest_suffix"), "must not be empty")
    for url in settings.webhook_urls:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(where("webhook_urls"), "only http:// and https:// URLs are accepted")
    if settings.sse == "AES256" and settings.sse_kms_key_id:
        raise ConfigError(where("sse_kms_key_id"), "a KMS key needs CHUNKD_SSE=aws:kms or aws:kms:dsse, not AES256")
    if settings.sse == "AES256" and settings.sse_bucket_key:
        raise ConfigError(where("sse_bucket_key"), "an S3 Bucket Key needs CHUNKD_SSE=aws:kms, not AES256")
    if (settings.sse or settings.sse_kms_key_id) and settings.sse_c_key_file is not None:
        raise ConfigError(where("sse_c_key_file"), "S3 takes one encryption per object: CHUNKD_SSE or a customer key, not both")
    _validate_connection(settings, where)
    from chunkd.model.keys import validate_template

    try:
        validate_template(settings.key_template)
    except ValueError as exc:
        raise ConfigError(where("key_template"), str(exc)) from None


def _validate_state_url(url: str, setting: str) -> None:
    """A scheme the store opens, and a Sentinel URL that parses; the message never quotes the URL
    (its userinfo and query may hold passwords)."""
    from chunkd.store import STATE_SCHEMES
    from chunkd.store.redis_sentinel import SCHEMES as SENTINEL_SCHEMES
    from chunkd.store.redis_sentinel import parse_sentinel_url

    if not url.startswith(STATE_SCHEMES):
        raise ConfigError(setting, "must start with redis://, rediss://, redis+sentinel:// or sqlite:///")
    if url.startswith(SENTINEL_SCHEMES):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            raise ConfigError(setting, str(exc)) from None


def _validate_connection(settings: Settings, where: Callable[[str], str]) -> None:
    """The files the S3 connection needs must be there (and the SSE-C key exactly 32 bytes) at start."""
    if settings.s3_ca_bundle is not None and not settings.s3_ca_bundle.is_file():
        raise ConfigError(where("s3_ca_bundle"), f"{settings.s3_ca_bundle} is not a readable file")
    if settings.sse_c_key_file is not None:
        read_sse_c_key(settings.sse_c_key_file, where("sse_c_key_file"))


def read_sse_c_key(path: Path, setting: str = "CHUNKD_SSE_C_KEY_FILE") -> bytes:
    """The SSE-C key's raw bytes; ConfigError naming `setting` (never showing the key) unless the
    file holds exactly 32 bytes."""
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror}") from None
    if len(key) != SSE_C_KEY_BYTES:
        raise ConfigError(
            setting, f"{path} holds {len(key)} bytes; an SSE-C key is exactly {SSE_C_KEY_BYTES} (AES-256, raw bytes)",
        )
    return key


def with_destination(settings: Settings, url: str) -> Settings:
    """`chunkd upload PATH… s3://BUCKET/PREFIX/`, as `aws s3 cp` takes it: that bucket, and keys
    `PREFIX/{relpath}`, for this run only."""
    match = re.fullmatch(r"s3://([^/]*)(?:/(.*))?", url)
    if match is None or not _BUCKET_RE.match(match[1]):
        raise ConfigError(url, "not an s3://BUCKET/PREFIX/ destination (bucket: 3-63 of a-z 0-9 . -)")
    prefix = "/".join(part for part in (match[2] or "").split("/") if part)
    prefix = prefix.replace("{", "{{").replace("}", "}}")  # literal text, not template fields
    return replace(settings, bucket=match[1], key_template=f"{prefix}/{{relpath}}" if prefix else "{relpath}")
