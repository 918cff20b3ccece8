"""Real media made by the system ffmpeg, small enough that each file takes well under a second.

Every file is a 320x240 `testsrc` picture at 25 fps with a mono 440 Hz sine at 48 kHz, encoded
with libx264 `-preset ultrafast` (mpeg4 when this ffmpeg has no libx264) and AAC.

How ffmpeg writes a non-fragmented MP4 into a file, measured with ffmpeg 5.1 (a 4 s `-re`
recording with audio, 103,280 bytes, the file read every 0.5 s and each snapshot compared with
the finished file):

- The header goes first: `ftyp` (bytes 0-31), an 8-byte `free` placeholder (32-39), then an
  `mdat` header whose 32-bit size at offset 40 is 0 ("to end of file") while recording.
- Sample data is appended front to back and never rewritten. In every snapshot the only bytes
  that differed from the finished file were 41-43: the `mdat` size, patched once at the end
  (bytes 40-43; byte 40 stayed 0 only because the size was small). When `mdat` passes 4 GiB,
  ffmpeg's movenc.c `mov_write_trailer` instead rewrites bytes 32-47: the `free` placeholder
  becomes a 64-bit-size `mdat` header. So bytes 32-47 are the only early bytes that change.
- `moov` is appended at the end (at 99,657, 3,623 bytes), after the last sample.
- With `-movflags +faststart` the same file is written, then shifted in place (same inode) to
  put `moov` right after `ftyp`: every byte from offset 32 to the end changes, about 4 s after
  the recording began here.
- ffmpeg's file output is buffered in 256 KiB blocks: without `-flush_packets 1` a 25 KB/s
  recording stays at its 44-48 header bytes until it ends, which is why `record_mp4_slowly`
  passes that flag (a watcher then sees the file grow about every frame).

A file recorded this way is not readable until ffmpeg finishes: ffprobe says "moov atom not
found" until the trailer is written, and forever if ffmpeg is killed (SIGINT lets it finish).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

VIDEO_SOURCE = "testsrc=size={size}:rate=25"
# Noisy pictures encoded losslessly: about 1.7 MB/s, so a recording passes S3's 5 MiB part size
# in seconds and is uploaded in parts while it grows (testsrc at 320x240 makes 25 KB/s).
HEAVY_SOURCE = "testsrc2=size=1280x720:rate=25"
AUDIO_SOURCE = "sine=frequency=440:sample_rate=48000"
FRAGMENTED_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_ffmpeg() -> str:
    """Path of ffmpeg; skips without ffmpeg/ffprobe, except in CI where a skip would hide the tests."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install ffmpeg)"
        if _in_ci():
            pytest.fail(f"{message}; CI must run the media tests", pytrace=False)
        pytest.skip(message)
    return shutil.which("ffmpeg")  # type: ignore[return-value]


@functools.cache
def video_codec_args() -> tuple[str, ...]:
    """libx264 is what cameras and screen recorders produce; mpeg4 is built into every ffmpeg."""
    encoders = subprocess.run(
        [require_ffmpeg(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    if " libx264 " in encoders:
        return ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    return ("-c:v", "mpeg4", "-pix_fmt", "yuv420p")


def _command(
    path: Path,
    seconds: float,
    *,
    audio: bool,
    size: str,
    realtime: bool,
    movflags: str | None,
    heavy: bool = False,
) -> list[str]:
    pace = ["-re"] if realtime else []
    command = [require_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    source = HEAVY_SOURCE if heavy else VIDEO_SOURCE.format(size=size)
    command += [*pace, "-f", "lavfi", "-i", source]
    if audio:
        command += [*pace, "-f", "lavfi", "-i", AUDIO_SOURCE]
    codec = video_codec_args()
    command += ["-t", f"{seconds:g}", *codec, *(_lossless(codec) if heavy else ())]
    if audio:
        command += ["-c:a", "aac", "-ac", "1"]
    if movflags:
        command += ["-movflags", movflags]
    if realtime:
        command += ["-flush_packets", "1"]
    return [*command, "-f", "mp4", str(path)]


def _lossless(codec: tuple[str, ...]) -> tuple[str, ...]:
    return ("-qp", "0") if "libx264" in codec else ("-q:v", "1")


def _movflags(*, faststart: bool, fragmented: bool) -> str | None:
    if faststart and fragmented:
        raise ValueError("faststart and fragmented exclude each other: a fragmented MP4 has moov first")
    if faststart:
        return "+faststart"
    return FRAGMENTED_FLAGS if fragmented else None


def make_mp4(
    path: Path,
    seconds: float = 2.0,
    *,
    faststart: bool = False,
    fragmented: bool = False,
    audio: bool = True,
    size: str = "320x240",
) -> Path:
    """A finished MP4; by default `moov` at the end, as ffmpeg and most recorders leave it."""
    command = _command(
        Path(path),
        seconds,
        audio=audio,
        size=size,
        realtime=False,
        movflags=_movflags(faststart=faststart, fragmented=fragmented),
    )
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return Path(path)


def record_mp4_slowly(
    path: Path, seconds: float, *, faststart: bool = False, heavy: bool = False
) -> subprocess.Popen[bytes]:
    """Start recording straight into `path` in real time, so a watcher sees a growing file.
    `heavy`: about 1.7 MB/s (HEAVY_SOURCE) instead of 25 KB/s.

    The caller owns the process: `wait()` for it, `send_signal(SIGINT)` to stop early with a
    readable file, or `kill()` to leave one without `moov`, as a crashed recorder would.
    """
    command = _command(
        Path(path),
        seconds,
        audio=True,
        size="320x240",
        realtime=True,
        movflags=_movflags(faststart=faststart, fragmented=False),
        heavy=heavy,
    )
    # Only errors reach stderr (-loglevel error), so an unread pipe cannot fill up and stall it.
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_text_as_mp4(path: Path) -> Path:
    """Not media at all, under a video's name: what a mistaken copy into the drop folder looks like."""
    Path(path).write_text("This is a text file, not a video.\n" * 20, encoding="utf-8")
    return Path(path)


def make_truncated_copy(src: Path, dst: Path, fraction: float = 0.6) -> Path:
    """The first `fraction` of `src`: a copy cut short, as by a full disk or a crash mid-transfer."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)
