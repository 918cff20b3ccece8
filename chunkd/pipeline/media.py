"""What ffprobe says about a video file, reduced to what the manifest's `media` block records.

Probing is advisory: the bytes are uploaded whatever ffprobe thinks of them, so nothing here
raises for bad media. A camera that writes garbage, a file truncated by a crash or a probe that
hangs on a FIFO all come back as `MediaInfo(valid=False, reason=...)`, and a missing ffprobe comes
back as None so the caller can warn once and record `media: null` with `UNAVAILABLE_REASON`.

We run ffprobe ourselves rather than through `ffmpeg.probe` (ffmpeg-python 0.2.0): that function
has no process timeout, and its `**kwargs` become ffprobe flags, so `ffmpeg.probe(p, timeout=60)`
would silently pass `-timeout 60` (a network I/O timeout in microseconds), not bound the run.
The arguments are the ones it uses, plus `-v error` so stderr holds only the reason.

What "valid" does not catch: ffprobe reads the header (`moov`) and a few packets, not every
sample. An MP4 with `moov` at the front (`+faststart`, or fragmented) that lost its tail still
probes as valid with its full duration; only files whose `moov` sits at the end are caught.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkd.errors import ProbeIncomplete

log = logging.getLogger("chunkd.media")

UNAVAILABLE_REASON = "ffprobe not installed"
TIMEOUT_REASON = "ffprobe timed out"
NO_AV_REASON = "no audio or video streams"
NO_STREAMS_REASON = "no streams"
NO_DURATION_REASON = "no duration"
NOT_JSON_REASON = "ffprobe output is not JSON"

PROBE_ARGS = ("-v", "error", "-show_format", "-show_streams", "-of", "json")
MAX_REASON_CHARS = 200

# ffprobe prefixes messages with the component that raised them: "[mov,mp4,... @ 0x55d1c0] ".
_COMPONENT_PREFIX = re.compile(r"^\[[^\]]*@\s*0x[0-9a-fA-F]+\]\s*")


@dataclass(frozen=True)
class MediaInfo:
    """ffprobe's verdict on one file; invalid results keep whatever was readable, for the manifest."""

    valid: bool
    reason: str | None = None
    container: str | None = None
    duration: float | None = None
    bitrate: int | None = None
    streams: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `media` block: every top-level key always present, so readers need no guards."""
        return {
            "valid": self.valid,
            "reason": self.reason,
            "container": self.container,
            "duration": self.duration,
            "bitrate": self.bitrate,
            "streams": [dict(stream) for stream in self.streams],
        }


def ffprobe_available() -> bool:
    return shutil.which("ffprobe") is not None


def probe(path: Path, *, timeout: float = 60) -> MediaInfo | None:
    """Probe `path`; None only when ffprobe is not installed, never an exception for bad media.

    Raises ProbeIncomplete when ffprobe timed out or died from a signal (a slow disk, or a Ctrl-C
    that reached the whole process group): a good file must not be quarantined for that.
    """
    binary = shutil.which("ffprobe")
    if binary is None:
        return None
    target = ffprobe_target(path)
    try:
        completed = subprocess.run(
            [binary, *PROBE_ARGS, "-i", target],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProbeIncomplete(f"{TIMEOUT_REASON} after {timeout:g}s") from None
    except FileNotFoundError:
        # Uninstalled between `which` and `run`: the same as never installed.
        return None
    except OSError as exc:
        return invalid(f"ffprobe could not run: {exc.strerror or exc}")
    if completed.returncode < 0:
        raise ProbeIncomplete(f"ffprobe was killed by signal {-completed.returncode}")
    if completed.returncode != 0:
        reason = error_reason(completed.stderr, target=target, returncode=completed.returncode)
        log.debug("ffprobe rejected %s: %s", path, reason)
        return invalid(reason)
    try:
        data = json.loads(completed.stdout)
    except (ValueError, UnicodeDecodeError):
        return invalid(NOT_JSON_REASON)
    if not isinstance(data, dict):
        return invalid(NOT_JSON_REASON)
    return from_probe(data)


def ffprobe_target(path: Path) -> str:
    """A `file:` URL, so a name like `-x.mp4` or `http:clip.mp4` in the drop folder stays a local file."""
    return "file:" + str(Path(path).absolute())


def invalid(reason: str) -> MediaInfo:
    return MediaInfo(valid=False, reason=reason)


def error_reason(stderr: bytes, *, target: str, returncode: int) -> str:
    """The first line of ffprobe's stderr, without the component tag and path it prefixes it with.

    The first line is the specific cause ("moov atom not found"); the generic one
    ("Invalid data found when processing input") follows it.
    """
    for raw_line in stderr.decode("utf-8", errors="replace").splitlines():
        line = _COMPONENT_PREFIX.sub("", raw_line.strip())
        line = line.removeprefix(f"{target}: ").strip()
        if line:
            return line[:MAX_REASON_CHARS]
    return f"ffprobe failed (exit {returncode})"


def from_probe(data: dict[str, Any]) -> MediaInfo:
    """Turn ffprobe's JSON into a verdict; pure, so every rule is testable without a media file."""
    fmt = data.get("format") or {}
    streams = [summarise_stream(raw) for raw in data.get("streams") or [] if isinstance(raw, dict)]
    duration = positive_float(fmt.get("duration")) or longest_stream_duration(data.get("streams") or [])
    info = MediaInfo(
        valid=True,
        container=fmt.get("format_name"),
        duration=duration,
        bitrate=to_int(fmt.get("bit_rate")),
        streams=streams,
    )
    reason = invalid_reason(info)
    if reason is None:
        return info
    return MediaInfo(False, reason, info.container, info.duration, info.bitrate, info.streams)


def invalid_reason(info: MediaInfo) -> str | None:
    """Why a file ffprobe could open is still not a usable video (or audio) file, if it is not."""
    if not info.streams:
        return NO_STREAMS_REASON
    if not any(stream.get("type") in ("video", "audio") for stream in info.streams):
        return NO_AV_REASON
    if info.duration is None:
        return NO_DURATION_REASON
    return None


def summarise_stream(raw: dict[str, Any]) -> dict[str, Any]:
    """The subset of one ffprobe stream a reader of the manifest cares about; absent keys are left out."""
    kind = raw.get("codec_type")
    summary: dict[str, Any] = {"index": raw.get("index"), "type": kind, "codec": raw.get("codec_name")}
    if kind == "video":
        summary.update(
            width=to_int(raw.get("width")),
            height=to_int(raw.get("height")),
            frame_rate=frame_rate(raw),
            pix_fmt=raw.get("pix_fmt"),
        )
    elif kind == "audio":
        summary.update(sample_rate=to_int(raw.get("sample_rate")), channels=to_int(raw.get("channels")))
    return {key: value for key, value in summary.items() if value is not None}


def frame_rate(raw: dict[str, Any]) -> float | None:
    """Average rate first (what plays back); the container's base rate when the average is unknown."""
    return parse_ratio(raw.get("avg_frame_rate")) or parse_ratio(raw.get("r_frame_rate"))


def parse_ratio(text: object, *, digits: int = 3) -> float | None:
    """"30000/1001" -> 29.97; ffprobe writes "0/0" for "unknown", which must not divide by zero."""
    if not isinstance(text, str) or not text:
        return None
    numerator, _, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return round(value, digits) if math.isfinite(value) and value > 0 else None


def longest_stream_duration(raw_streams: list[Any]) -> float | None:
    """Some containers only time their streams, so the format-level duration can be missing."""
    durations = [positive_float(s.get("duration")) for s in raw_streams if isinstance(s, dict)]
    known = [d for d in durations if d is not None]
    return max(known) if known else None


def positive_float(value: object) -> float | None:
    """ffprobe prints numbers as strings and "N/A" for unknown; zero or less means unknown too."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def to_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None
