"""chunkd.pipeline.thumbnail: the ffmpeg command built with ffmpeg-python, the frame it makes of a
real video (read back with ffprobe), and every way making it can fail, as a reason, never a raise."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import pytest

from chunkd.pipeline import thumbnail
from chunkd.pipeline.media import MediaInfo, probe
from chunkd.pipeline.thumbnail import PosterFrames, extract, ffmpeg_command, frame_time, video_duration
from tests.support.media import make_mp4, make_text_as_mp4, require_ffmpeg, video_codec_args


def jpeg_size(data: bytes, tmp_path: Path) -> tuple[str, int, int]:
    """(codec, width, height) of a JPEG, as ffprobe decodes it."""
    path = tmp_path / "frame.jpg"
    path.write_bytes(data)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)], capture_output=True, check=True, timeout=30
    )
    (stream,) = json.loads(out.stdout)["streams"]
    return stream["codec_name"], stream["width"], stream["height"]


def fake_ffmpeg(folder: Path, script: str) -> Path:
    """An `ffmpeg` on a PATH of its own that runs `script` (sh) instead of encoding anything."""
    folder.mkdir(exist_ok=True)
    path = folder / "ffmpeg"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def make_h264(path: Path, *x264: str) -> Path:
    """A 10 s 320x240 H.264 clip at 25 fps, no audio, with the given x264 options."""
    if "libx264" not in video_codec_args():
        pytest.skip("this ffmpeg has no libx264")
    source = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "10"]
    command = [require_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-y", *source, *video_codec_args(), *x264]
    subprocess.run([*command, str(path)], check=True, capture_output=True, timeout=60)
    return path


def run_frame(path: Path, at: float, *, keyframe_only: bool) -> bytes:
    """What the command writes for `path` at `at`: a JPEG, or nothing."""
    command = ffmpeg_command(require_ffmpeg(), path, at, keyframe_only=keyframe_only)
    return subprocess.run(command, capture_output=True, check=True, timeout=60).stdout


def media_of(path: Path) -> dict[str, object]:
    info = probe(path)
    assert info is not None and info.valid
    return info.to_dict()


# -- when, and what command ---------------------------------------------------------------------


@pytest.mark.parametrize(("duration", "at"), [(2.0, 0.2), (60.0, 6.0), (100.0, 10.0), (7200.0, 10.0), (0.04, 0.004)])
def test_the_frame_is_taken_at_a_tenth_of_the_duration_and_at_most_10_s_in(duration: float, at: float) -> None:
    assert frame_time(duration) == at


def test_the_command_seeks_before_the_input_and_writes_one_scaled_jpeg_to_stdout() -> None:
    command = ffmpeg_command("/usr/bin/ffmpeg", Path("/in/-x clip.mp4"), 6.0)

    assert command[0] == "/usr/bin/ffmpeg"
    # -ss before -i: a seek in the input, not decoding every frame before it
    assert command.index("-ss") < command.index("-i")
    assert command[command.index("-ss") + 1] == "6.0"
    # one decoding thread (an input option)
    assert command[command.index("-threads") + 1] == "1" and command.index("-threads") < command.index("-i")
    assert command[command.index("-i") + 1] == "file:/in/-x clip.mp4"  # a name like an option stays a file
    graph = command[command.index("-filter_complex") + 1]
    assert "scale=min(640\\,iw):-2" in graph  # never wider than 640 nor enlarged; even height, aspect kept
    for option, value in (("-vframes", "1"), ("-f", "image2"), ("-vcodec", "mjpeg")):
        assert command[command.index(option) + 1] == value
    assert "pipe:" in command and "-nostdin" in command
    assert command[command.index("-v") + 1] == "error"  # stderr holds only the reason


def test_the_command_decodes_keyframes_only_and_its_fallback_every_frame() -> None:
    keyframes = ffmpeg_command("/usr/bin/ffmpeg", Path("clip.mp4"), 6.0)
    exact = ffmpeg_command("/usr/bin/ffmpeg", Path("clip.mp4"), 6.0, keyframe_only=False)

    # an input option: the decoder skips every frame that is not a keyframe
    assert keyframes[keyframes.index("-skip_frame") + 1] == "nokey"
    assert keyframes.index("-skip_frame") < keyframes.index("-i")
    assert "-skip_frame" not in exact
    for command in (keyframes, exact):
        assert command.index("-ss") < command.index("-i") and command[command.index("-vframes") + 1] == "1"


def test_only_a_valid_file_with_a_video_stream_and_a_duration_gets_a_frame() -> None:
    video = {"type": "video", "codec": "h264"}
    audio = {"type": "audio", "codec": "aac"}
    assert video_duration({"valid": True, "duration": 4.0, "streams": [audio, video]}) == 4.0
    assert video_duration({"valid": True, "duration": 4.0, "streams": [audio]}) is None
    assert video_duration({"valid": False, "duration": 4.0, "streams": [video]}) is None
    assert video_duration({"valid": True, "duration": None, "streams": [video]}) is None
    assert video_duration(MediaInfo(valid=True, duration=0.0, streams=[video]).to_dict()) is None
    assert video_duration(None) is None


def test_the_pool_starts_nothing_when_off_or_not_a_video(tmp_path: Path) -> None:
    media = {"valid": True, "duration": 4.0, "streams": [{"type": "video"}]}
    off = PosterFrames(enabled=False)
    on = PosterFrames(enabled=True)
    try:
        assert off.start(tmp_path / "a.mp4", media) is None
        assert on.start(tmp_path / "a.mp4", {"valid": False}) is None
        assert on.start(tmp_path / "a.mp4", None) is None
    finally:
        off.shutdown()
        on.shutdown()


# -- real frames --------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [("1280x720", (640, 360)), ("320x240", (320, 240)), ("854x480", (640, 360))])
def test_a_real_video_gives_a_jpeg_at_most_640_wide_with_its_aspect(
    tmp_path: Path, size: str, expected: tuple[int, int]
) -> None:
    require_ffmpeg()
    clip = make_mp4(tmp_path / "clip.mp4", 2.0, size=size)

    frame = PosterFrames(enabled=True)
    try:
        pending = frame.start(clip, media_of(clip))
        assert pending is not None
        made = pending.result(timeout=60)
    finally:
        frame.shutdown()

    assert made.error is None and made.jpeg is not None
    assert made.jpeg[:2] == b"\xff\xd8"  # JPEG SOI
    assert jpeg_size(made.jpeg, tmp_path) == ("mjpeg", *expected)


def test_the_keyframe_run_gives_the_first_keyframe_at_or_after_the_time(tmp_path: Path) -> None:
    require_ffmpeg()
    clip = make_h264(tmp_path / "gop2s.mp4", "-g", "50", "-sc_threshold", "0")  # keyframes at 0, 2, 4 ... s

    at_1s = run_frame(clip, 1.0, keyframe_only=True)

    assert at_1s[:2] == b"\xff\xd8"  # the keyframe at 0 is before 1 s, yet the answer is not empty
    assert at_1s == run_frame(clip, 2.0, keyframe_only=False)  # the picture at 2 s, as the exact run makes it
    assert at_1s != run_frame(clip, 1.0, keyframe_only=False)
    assert run_frame(clip, 9.5, keyframe_only=True) == b""  # no keyframe after 8 s: nothing


def test_a_stream_with_no_keyframe_after_the_start_still_gets_its_frame(tmp_path: Path) -> None:
    require_ffmpeg()
    # intra refresh: one IDR frame at 0, then recovery points that a keyframe-only decoder skips
    clip = make_h264(tmp_path / "refresh.mp4", "-x264-params", "intra-refresh=1:keyint=50")
    assert run_frame(clip, 1.0, keyframe_only=True) == b""

    frame = extract(clip, 10.0)

    assert frame.error is None and frame.jpeg == run_frame(clip, 1.0, keyframe_only=False)


def test_an_empty_keyframe_run_is_followed_by_one_exact_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls"
    script = f'echo "$*" >> {calls}; case "$*" in *nokey*) exit 0;; esac; printf "\\377\\330exact"'
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", script)))

    frame = extract(tmp_path / "clip.mp4", 20.0)

    assert frame.error is None and frame.jpeg == b"\xff\xd8exact"
    first, second = calls.read_text().splitlines()
    assert "-skip_frame nokey" in first and "-ss 2.0" in first
    assert "-skip_frame" not in second and "-ss 2.0" in second


# -- failures: a reason, never an exception ------------------------------------------------------


def test_ffmpeg_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert extract(tmp_path / "clip.mp4", 2.0).error == "ffmpeg not installed"


def test_ffmpeg_that_hangs_is_stopped_by_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", "exec /bin/sleep 30")))
    began = time.monotonic()
    frame = extract(tmp_path / "clip.mp4", 2.0, timeout=0.5)
    assert frame.error == "ffmpeg timed out after 0.5s" and frame.jpeg is None
    assert time.monotonic() - began < 10


def test_ffmpeg_exiting_non_zero_gives_its_first_line_of_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", "echo 'Decoder failed' >&2; echo 'second' >&2; exit 1")))
    assert extract(tmp_path / "clip.mp4", 2.0).error == "ffmpeg failed: Decoder failed"


def test_ffmpeg_exiting_non_zero_silently_or_by_a_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", "exit 3")))
    assert extract(tmp_path / "clip.mp4", 2.0).error == "ffmpeg failed (exit 3)"
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", "kill -9 $$")))
    assert extract(tmp_path / "clip.mp4", 2.0).error == "ffmpeg was killed by signal 9"


def test_ffmpeg_that_writes_no_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", "exit 0")))
    assert extract(tmp_path / "clip.mp4", 2.0).error == "ffmpeg wrote no frame"


def test_the_real_ffmpeg_on_bytes_that_are_not_video(tmp_path: Path) -> None:
    require_ffmpeg()
    frame = extract(make_text_as_mp4(tmp_path / "x.mp4"), 2.0)
    assert frame.jpeg is None and frame.error is not None and frame.error.startswith("ffmpeg failed: ")
    assert str(tmp_path) not in frame.error  # the reason, without the path ffmpeg prefixes it with


def test_a_stopped_pool_starts_nothing(tmp_path: Path) -> None:
    pool = PosterFrames(enabled=True)
    pool.shutdown()
    assert pool.start(tmp_path / "a.mp4", {"valid": True, "duration": 2.0, "streams": [{"type": "video"}]}) is None
    assert thumbnail.thumbnail_key("cam/a.mp4") == "cam/a.mp4.thumb.jpg"
