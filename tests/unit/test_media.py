"""chunkd.media against the real ffprobe on real files made by the real ffmpeg (tests/support/media.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from chunkd.errors import ProbeIncomplete
from chunkd.pipeline import media
from chunkd.pipeline.media import MediaInfo, probe
from tests.support.media import (
    make_mp4,
    make_text_as_mp4,
    make_truncated_copy,
    record_mp4_slowly,
    require_ffmpeg,
)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of media for the module: encoding is the slow part, so each file is made once."""
    require_ffmpeg()
    folder = tmp_path_factory.mktemp("media")
    make_mp4(folder / "plain.mp4", 2.0)
    make_mp4(folder / "faststart.mp4", 2.0, faststart=True)
    make_mp4(folder / "fragmented.mp4", 2.0, fragmented=True)
    make_mp4(folder / "silent.mp4", 1.0, audio=False)
    return folder


@pytest.fixture
def plain_info(media_dir: Path) -> MediaInfo:
    info = probe(media_dir / "plain.mp4")
    assert info is not None
    return info


def _streams_of(info: MediaInfo, kind: str) -> list[dict]:
    return [stream for stream in info.streams if stream["type"] == kind]


# --- valid files ---------------------------------------------------------------------------------


def test_plain_mp4_is_valid_with_format_metadata(plain_info: MediaInfo) -> None:
    assert plain_info.valid, plain_info.reason
    assert plain_info.reason is None
    assert "mp4" in plain_info.container or "mov" in plain_info.container
    assert plain_info.duration == pytest.approx(2.0, abs=0.1)
    assert plain_info.bitrate is not None and plain_info.bitrate > 0


def test_plain_mp4_video_stream(plain_info: MediaInfo) -> None:
    (video,) = _streams_of(plain_info, "video")
    assert video["codec"] in ("h264", "mpeg4")
    assert (video["width"], video["height"]) == (320, 240)
    assert video["frame_rate"] == pytest.approx(25.0)
    assert video["pix_fmt"] == "yuv420p"
    assert isinstance(video["index"], int)


def test_plain_mp4_audio_stream(plain_info: MediaInfo) -> None:
    (audio,) = _streams_of(plain_info, "audio")
    assert audio["codec"] == "aac"
    assert audio["sample_rate"] == 48000
    assert audio["channels"] == 1
    assert "width" not in audio and "frame_rate" not in audio


@pytest.mark.parametrize("name", ["faststart.mp4", "fragmented.mp4"])
def test_moov_first_variants_are_valid(media_dir: Path, name: str) -> None:
    info = probe(media_dir / name)
    assert info is not None and info.valid, info
    assert info.duration == pytest.approx(2.0, abs=0.1)


def test_video_without_audio_is_valid(media_dir: Path) -> None:
    info = probe(media_dir / "silent.mp4")
    assert info is not None and info.valid, info
    assert [stream["type"] for stream in info.streams] == ["video"]


def test_name_that_looks_like_an_option_or_url_is_probed_as_a_local_file(media_dir: Path) -> None:
    odd = media_dir / "-http:odd name.mp4"
    odd.write_bytes((media_dir / "plain.mp4").read_bytes())
    info = probe(odd)
    assert info is not None and info.valid, info


# --- invalid files -------------------------------------------------------------------------------


def test_text_file_named_mp4_is_invalid_with_ffprobes_reason(tmp_path: Path) -> None:
    info = probe(make_text_as_mp4(tmp_path / "notes.mp4"))
    assert info is not None and not info.valid
    assert info.reason in ("moov atom not found", "Invalid data found when processing input")
    assert str(tmp_path) not in info.reason, "the path prefix is stripped"


def test_zero_byte_file_is_invalid(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    info = probe(empty)
    assert info is not None and not info.valid
    assert info.reason


def test_truncated_copy_of_moov_at_end_mp4_is_invalid(media_dir: Path, tmp_path: Path) -> None:
    cut = make_truncated_copy(media_dir / "plain.mp4", tmp_path / "cut.mp4", 0.6)
    info = probe(cut)
    assert info is not None and not info.valid
    assert info.reason


def test_subtitles_only_is_invalid_for_lack_of_audio_and_video(tmp_path: Path) -> None:
    require_ffmpeg()
    srt = tmp_path / "captions.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n", encoding="utf-8")
    info = probe(srt)
    assert info is not None and not info.valid
    assert info.reason == media.NO_AV_REASON
    assert [stream["type"] for stream in info.streams] == ["subtitle"]


def test_missing_file_is_invalid_not_an_exception(tmp_path: Path) -> None:
    require_ffmpeg()
    info = probe(tmp_path / "gone.mp4")
    assert info is not None and not info.valid
    assert "No such file" in info.reason


def test_a_probe_that_hangs_times_out(tmp_path: Path) -> None:
    require_ffmpeg()
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # ffprobe blocks opening a FIFO that no one writes
    started = time.monotonic()
    with pytest.raises(ProbeIncomplete, match=media.TIMEOUT_REASON):
        probe(fifo, timeout=0.5)  # says nothing about the file: never a reason to quarantine it
    assert time.monotonic() - started < 5


def test_file_being_recorded_is_invalid_until_ffmpeg_finishes(tmp_path: Path) -> None:
    growing = tmp_path / "live.mp4"
    recorder = record_mp4_slowly(growing, 1.5)
    try:
        sizes = []
        for _ in range(20):
            time.sleep(0.1)
            sizes.append(growing.stat().st_size if growing.exists() else 0)
            if sizes[-1] > 8192:
                break
        assert sizes[-1] > 8192, f"the recording should grow while running: {sizes}"
        midway = probe(growing)
        assert midway is not None and not midway.valid
        assert midway.reason == "moov atom not found"
    finally:
        recorder.send_signal(signal.SIGINT)  # ffmpeg finishes the file (writes moov) on SIGINT
        _, errors = recorder.communicate(timeout=10)
        assert recorder.returncode in (0, 255), errors
    done = probe(growing)
    assert done is not None and done.valid, done


# --- without ffprobe -----------------------------------------------------------------------------


def test_probe_returns_none_when_ffprobe_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert media.ffprobe_available() is False
    assert probe(tmp_path / "anything.mp4") is None


def test_probe_returns_none_when_which_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media.shutil, "which", lambda name: None)
    assert probe(Path("whatever.mp4")) is None
    assert media.UNAVAILABLE_REASON == "ffprobe not installed"


# --- manifest block ------------------------------------------------------------------------------


def test_to_dict_is_json_serialisable_for_valid_and_invalid(plain_info: MediaInfo, tmp_path: Path) -> None:
    bad = probe(make_text_as_mp4(tmp_path / "bad.mp4"))
    assert bad is not None
    for info in (plain_info, bad):
        block = json.loads(json.dumps(info.to_dict(), allow_nan=False))
        assert set(block) == {"valid", "reason", "container", "duration", "bitrate", "streams"}
        assert block["valid"] is info.valid
    assert json.loads(json.dumps(plain_info.to_dict()))["streams"] == plain_info.streams


# --- pure parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30000/1001", 29.97),
        ("25/1", 25.0),
        ("24", 24.0),
        ("0/0", None),
        ("1/0", None),
        ("", None),
        (None, None),
        ("N/A", None),
    ],
)
def test_parse_ratio(text: str | None, expected: float | None) -> None:
    assert media.parse_ratio(text) == expected


def test_frame_rate_falls_back_to_r_frame_rate_when_average_unknown() -> None:
    assert media.frame_rate({"avg_frame_rate": "0/0", "r_frame_rate": "60000/1001"}) == 59.94


def test_error_reason_strips_component_tag_and_path() -> None:
    stderr = (
        b"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d1c0a8] moov atom not found\n"
        b"file:/drop/a.mp4: Invalid data found when processing input\n"
    )
    assert media.error_reason(stderr, target="file:/drop/a.mp4", returncode=1) == "moov atom not found"
    assert media.error_reason(b"file:/drop/a.mp4: Is a directory\n", target="file:/drop/a.mp4", returncode=1) == (
        "Is a directory"
    )
    assert media.error_reason(b"\n \n", target="x", returncode=1) == "ffprobe failed (exit 1)"


def test_from_probe_without_duration_is_invalid_but_keeps_streams() -> None:
    info = media.from_probe(
        {"format": {"format_name": "mpegts", "duration": "N/A"}, "streams": [{"index": 0, "codec_type": "video"}]}
    )
    assert not info.valid and info.reason == media.NO_DURATION_REASON
    assert info.streams == [{"index": 0, "type": "video"}]


def test_from_probe_uses_longest_stream_duration_when_format_has_none() -> None:
    info = media.from_probe(
        {
            "format": {"format_name": "matroska,webm"},
            "streams": [
                {"index": 0, "codec_type": "video", "duration": "1.5"},
                {"index": 1, "codec_type": "audio", "duration": "1.75"},
            ],
        }
    )
    assert info.valid and info.duration == 1.75


def test_from_probe_with_no_streams_is_invalid() -> None:
    info = media.from_probe({"format": {"format_name": "mp4", "duration": "2.0"}, "streams": []})
    assert info == MediaInfo(valid=False, reason=media.NO_STREAMS_REASON, container="mp4", duration=2.0)
