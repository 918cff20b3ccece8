"""Poster frames: one JPEG frame of a finished video, uploaded beside its object as `<key>.thumb.jpg`.

The frame is taken at 10 % of the duration and at most 10 s in (past a fade-in or a black leader,
and near the start of a long recording, where input seeking is quickest), scaled to at most 640
px wide with the aspect kept and an even height. Only files ffprobe found valid with a video
stream and a duration get one; a failure to make it is recorded (`thumbnail_error` in the
manifest), never an upload failure.

The ffmpeg command is built with ffmpeg-python's graph API and run here, with a process timeout,
for the reason chunkd.pipeline.media runs ffprobe itself: ffmpeg-python's `run` has no timeout.

Extraction runs in a small pool of its own (`PosterFrames`), started as soon as the media check
has passed, so it overlaps the rest of finalize (the last parts, Complete, the check of the
object) instead of following it; publish waits for it only when it is still running.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg

from chunkd.pipeline.media import error_reason, ffprobe_target

log = logging.getLogger("chunkd.thumbnail")

THUMBNAIL_SUFFIX = ".thumb.jpg"
CONTENT_TYPE_JPEG = "image/jpeg"
MAX_WIDTH = 640
AT_FRACTION = 0.10  # of the duration
AT_MOST_SECONDS = 10.0
TIMEOUT_SECONDS = 30.0  # one frame of a 1080p H.264 clip takes well under a second of CPU
WORKERS = 2  # frames made at once; each ffmpeg uses up to a core for a fraction of a second
JPEG_QUALITY = 4  # mjpeg -q:v, 2 (best) to 31: about 20 KB for a 640x360 frame
UNAVAILABLE_REASON = "ffmpeg not installed"


@dataclass(frozen=True)
class PosterFrame:
    """A JPEG frame, or why there is none."""

    jpeg: bytes | None = None
    error: str | None = None
    wall_seconds: float = 0.0


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def thumbnail_key(key: str) -> str:
    return f"{key}{THUMBNAIL_SUFFIX}"


def frame_time(duration: float) -> float:
    """Where the frame is taken: 10 % of the way in, at most 10 s in."""
    return round(min(duration * AT_FRACTION, AT_MOST_SECONDS), 3)


def video_duration(media: dict[str, Any] | None) -> float | None:
    """The duration of a file ffprobe found valid with a video stream; None for anything else
    (not probed, not media, audio only, no duration)."""
    if not media or media.get("valid") is not True:
        return None
    if not any(stream.get("type") == "video" for stream in media.get("streams") or []):
        return None
    duration = media.get("duration")
    return float(duration) if isinstance(duration, int | float) and duration > 0 else None


def ffmpeg_command(binary: str, path: Path, at: float) -> list[str]:
    """One frame at `at` seconds, scaled to at most MAX_WIDTH wide (never enlarged; height even, the
    aspect kept), as a JPEG on stdout. `-ss` before the input: a seek to the keyframe before `at`,
    then decoding to it, instead of decoding everything before it. One decoding thread: the frame
    is made beside uploads on a box whose cores they need (and a thread per core costs more CPU
    in all for one frame: 0.23 s against 0.26 s for a 1080p H.264 clip)."""
    source = ffmpeg.input(ffprobe_target(path), ss=at, threads=1)
    stream = source.filter("scale", f"min({MAX_WIDTH},iw)", -2)
    output = stream.output("pipe:", vframes=1, format="image2", vcodec="mjpeg", **{"q:v": JPEG_QUALITY})
    command: list[str] = output.global_args("-nostdin", "-hide_banner", "-v", "error").compile(cmd=binary)
    return command


def extract(path: Path, duration: float, *, timeout: float = TIMEOUT_SECONDS) -> PosterFrame:
    """The poster frame of `path`; never raises: a missing ffmpeg, a timeout, a failed run or an
    empty answer come back as `PosterFrame(error=...)`."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        return PosterFrame(error=UNAVAILABLE_REASON)
    command = ffmpeg_command(binary, path, frame_time(duration))
    began = time.monotonic()
    try:
        completed = subprocess.run(
            command, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        return PosterFrame(error=f"ffmpeg timed out after {timeout:g}s")
    except OSError as exc:
        return PosterFrame(error=f"ffmpeg could not run: {exc.strerror or exc}")
    wall = time.monotonic() - began
    if completed.returncode != 0:
        return PosterFrame(error=_failure(completed, path), wall_seconds=wall)
    if not completed.stdout:
        return PosterFrame(error="ffmpeg wrote no frame", wall_seconds=wall)
    return PosterFrame(jpeg=completed.stdout, wall_seconds=wall)


def _failure(completed: subprocess.CompletedProcess[bytes], path: Path) -> str:
    """ffmpeg's first line of stderr (the cause), else how it ended."""
    if completed.returncode < 0:
        return f"ffmpeg was killed by signal {-completed.returncode}"
    if not completed.stderr.strip():
        return f"ffmpeg failed (exit {completed.returncode})"
    return "ffmpeg failed: " + error_reason(completed.stderr, target=ffprobe_target(path), returncode=completed.returncode)


class PosterFrames:
    """The bounded pool poster frames are made in, off the threads that send parts."""

    def __init__(self, *, enabled: bool, workers: int = WORKERS, timeout: float = TIMEOUT_SECONDS) -> None:
        self.enabled = enabled
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunkd-poster")

    def start(self, path: Path, media: dict[str, Any] | None) -> Future[PosterFrame] | None:
        """The frame of `path` on its way; None when it gets none (off, or not a valid video)."""
        duration = video_duration(media)
        if not self.enabled or duration is None:
            return None
        try:
            return self._pool.submit(extract, path, duration, timeout=self._timeout)
        except RuntimeError:  # shut down: the engine is stopping
            return None

    def shutdown(self) -> None:
        """Lets frames being made finish (each bounded by the timeout): a job still finalizing
        waits for its frame, and a cancelled one would cost it its poster."""
        self._pool.shutdown(wait=True)
