"""Poster frames: one JPEG frame of a finished video, uploaded beside its object as `<key>.thumb.jpg`.

The frame is the first keyframe at or after 10 % of the duration (that point at most 10 s in:
past a fade-in or a black leader, and near the start of a long recording, where input seeking is
quickest), scaled to at most 640 px wide with the aspect kept and an even height. Only files
ffprobe found valid with a video stream and a duration get one; a failure to make it is recorded
(`thumbnail_error` in the manifest), never an upload failure.

Why a keyframe and not the exact time: the input seek lands on the keyframe before the time, and
ffmpeg would decode every frame from there up to it (up to a GOP: 60 frames for a keyframe every
2 s, 250 with x264's default), which cost more CPU than uploading a short clip. Decoding keyframes
only (`-skip_frame nokey`) decodes one picture after the seek: ffmpeg still drops what comes
before the time (its accurate seek), so the keyframe before is dropped and the first frame out is
the next keyframe, the packets in between read but not decoded. There is none when the time is
past the last keyframe (a clip hardly longer than one keyframe interval: a single keyframe, at 0)
or when the later keyframes are not ones a decoder starts from (intra refresh: recovery points
flagged as sync samples): that run ends with no image, and one exact-time run, the old decode
from the keyframe before, makes the frame instead. Both runs share the timeout.

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
TIMEOUT_SECONDS = 30.0  # for both runs; one frame of a 1080p H.264 clip takes well under a second of CPU
WORKERS = 2  # frames made at once; each ffmpeg uses up to a core for a fraction of a second
JPEG_QUALITY = 4  # mjpeg -q:v, 2 (best) to 31: about 20 KB for a 640x360 frame
UNAVAILABLE_REASON = "ffmpeg not installed"
NO_FRAME_REASON = "ffmpeg wrote no frame"


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


def ffmpeg_command(binary: str, path: Path, at: float, *, keyframe_only: bool = True) -> list[str]:
    """One frame at `at` seconds, scaled to at most MAX_WIDTH wide (never enlarged; height even, the
    aspect kept), as a JPEG on stdout. `-ss` before the input: a seek to the keyframe before `at`
    instead of decoding everything before it. `keyframe_only`: the decoder skips all but keyframes,
    so the frame is the first keyframe at or after `at`, or none (see the module docstring);
    otherwise every frame from the keyframe before `at` is decoded up to the exact time. One
    decoding thread: the frame is made beside uploads on a box whose cores they need (and a thread
    per core costs more CPU in all for one frame)."""
    skip = {"skip_frame": "nokey"} if keyframe_only else {}
    source = ffmpeg.input(ffprobe_target(path), ss=at, threads=1, **skip)
    stream = source.filter("scale", f"min({MAX_WIDTH},iw)", -2)
    output = stream.output("pipe:", vframes=1, format="image2", vcodec="mjpeg", **{"q:v": JPEG_QUALITY})
    command: list[str] = output.global_args("-nostdin", "-hide_banner", "-v", "error").compile(cmd=binary)
    return command


def extract(path: Path, duration: float, *, timeout: float = TIMEOUT_SECONDS) -> PosterFrame:
    """The poster frame of `path`: the keyframe run, then the exact run if that one ended with no
    image. Never raises: a missing ffmpeg, a timeout, a failed run or an empty answer come back as
    `PosterFrame(error=...)`."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        return PosterFrame(error=UNAVAILABLE_REASON)
    at = frame_time(duration)
    began = time.monotonic()
    frame = _run(ffmpeg_command(binary, path, at), path, timeout=timeout, began=began)
    if frame.error == NO_FRAME_REASON:
        log.debug("no keyframe at or after %gs in %s; decoding to the exact time", at, path)
        frame = _run(ffmpeg_command(binary, path, at, keyframe_only=False), path, timeout=timeout, began=began)
    return frame


def _run(command: list[str], path: Path, *, timeout: float, began: float) -> PosterFrame:
    """One ffmpeg run with what is left of `timeout` since `began`."""
    timed_out = PosterFrame(error=f"ffmpeg timed out after {timeout:g}s")
    left = timeout - (time.monotonic() - began)
    if left <= 0:
        return timed_out
    try:
        completed = subprocess.run(
            command, capture_output=True, timeout=left, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        return timed_out
    except OSError as exc:
        return PosterFrame(error=f"ffmpeg could not run: {exc.strerror or exc}")
    wall = time.monotonic() - began
    if completed.returncode != 0:
        return PosterFrame(error=_failure(completed, path), wall_seconds=wall)
    if not completed.stdout:
        return PosterFrame(error=NO_FRAME_REASON, wall_seconds=wall)
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
