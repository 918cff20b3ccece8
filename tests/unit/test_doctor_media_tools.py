"""`chunkd doctor` on ffprobe (the media check) and ffmpeg (poster frames, CHUNKD_THUMBNAIL): a
missing one is a warning naming what it turns off, never a failure: uploads go on without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkd.ops import doctor
from tests.support.cli import run_chunkd


def tools_folder(folder: Path, *names: str) -> Path:
    """A folder holding executables with these names (empty scripts: only `which` looks at them)."""
    folder.mkdir()
    for name in names:
        tool = folder / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    return folder


def test_missing_tools_are_warnings_naming_what_they_turn_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tools_folder(tmp_path / "bin")))
    ffprobe = doctor.check_ffprobe(thumbnail=True)
    ffmpeg = doctor.check_ffmpeg(thumbnail=True)
    assert ffprobe.level == doctor.WARN and "not on PATH" in ffprobe.detail, ffprobe
    assert "quarantined" in ffprobe.detail and "poster frame" in ffprobe.detail, ffprobe
    assert ffmpeg.level == doctor.WARN and "not on PATH" in ffmpeg.detail, ffmpeg
    assert "poster frame" in ffmpeg.detail and "CHUNKD_THUMBNAIL" in ffmpeg.detail, ffmpeg
    assert ffmpeg.line().startswith("WARN  ffmpeg: ")


def test_tools_on_path_are_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tools_folder(tmp_path / "bin", "ffprobe", "ffmpeg")
    monkeypatch.setenv("PATH", str(folder))
    assert doctor.check_ffprobe(thumbnail=True) == doctor.Check(doctor.OK, "ffprobe", str(folder / "ffprobe"))
    assert doctor.check_ffmpeg(thumbnail=True) == doctor.Check(doctor.OK, "ffmpeg", str(folder / "ffmpeg"))


def test_ffmpeg_is_not_needed_without_poster_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tools_folder(tmp_path / "bin", "ffprobe")))
    check = doctor.check_ffmpeg(thumbnail=False)
    assert check.level == doctor.OK and "CHUNKD_THUMBNAIL=false" in check.detail, check
    assert "poster" not in doctor.check_ffprobe(thumbnail=False).detail


def test_doctor_warns_on_a_path_without_them_and_does_not_fail_for_it(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CHUNKD_", "AWS_"))}
    env.update(PATH=str(tools_folder(tmp_path / "bin")), CHUNKD_INPUT_DIR=str(tmp_path),
               CHUNKD_STATE_URL=f"sqlite:///{tmp_path / 's.db'}", CHUNKD_S3_ENDPOINT_URL="http://127.0.0.1:9",
               AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b")
    result = run_chunkd("doctor", env=env, cwd=tmp_path, timeout=60)
    lines = result.stdout.splitlines()
    assert any(line.startswith("WARN  ffprobe: not on PATH") for line in lines), result.stdout
    assert any(line.startswith("WARN  ffmpeg: not on PATH") for line in lines), result.stdout
    failed = [line for line in lines if line.startswith("FAIL")]
    assert [line.split(":")[0] for line in failed] == ["FAIL  s3 bucket"], result.stdout  # nothing listens on :9
