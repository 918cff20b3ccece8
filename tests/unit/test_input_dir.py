"""A missing drop folder is an error unless CHUNKD_CREATE_INPUT_DIR=true (the --dev default): an
unmounted NAS share must not fill the local disk. With CHUNKD_REQUIRE_MOUNT=true, doctor fails a
folder that is on the root filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkd.config import load_settings
from chunkd.ops import doctor
from tests.support.cli import error_lines, run_chunkd


def clean_env(**settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CHUNKD_")}
    return {**env, **settings}


def test_run_refuses_a_missing_input_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nas" / "cams"
    env = clean_env(CHUNKD_INPUT_DIR=str(missing), CHUNKD_CREATE_INPUT_DIR="false", CHUNKD_HTTP_ADDR="")
    result = run_chunkd("run", "--dev", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "CHUNKD_INPUT_DIR" in lines[0] and "CHUNKD_CREATE_INPUT_DIR" in lines[0], lines
    assert not missing.exists() and not (tmp_path / "nas").exists()


def test_create_input_dir_is_a_setting_and_false_by_default() -> None:
    assert load_settings(env={}).create_input_dir is None  # None: true under --dev, else false
    assert load_settings(env={"CHUNKD_CREATE_INPUT_DIR": "true"}).create_input_dir is True


def test_doctor_fails_a_missing_folder_unless_it_will_be_created(tmp_path: Path) -> None:
    assert doctor.check_input(tmp_path / "gone").level == doctor.FAIL
    assert doctor.check_input(tmp_path / "gone", create=True).level == doctor.WARN


def test_doctor_requires_a_mount_point_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    share = tmp_path / "share"
    (share / "cams").mkdir(parents=True)
    monkeypatch.setattr(os.path, "ismount", lambda path: False)
    check = doctor.check_mount(share / "cams")
    assert check.level == doctor.FAIL and "CHUNKD_REQUIRE_MOUNT" in check.detail, check
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == share)
    check = doctor.check_mount(share / "cams")
    assert check.level == doctor.OK and str(share) in check.detail, check


def test_the_root_filesystem_is_not_a_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os.path, "ismount", lambda path: str(path) == "/")
    assert doctor.check_mount(tmp_path).level == doctor.FAIL


def test_doctor_checks_the_mount_only_when_asked(tmp_path: Path) -> None:
    env = clean_env(CHUNKD_INPUT_DIR=str(tmp_path), CHUNKD_STATE_URL=f"sqlite:///{tmp_path / 's.db'}",
                    CHUNKD_S3_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b")
    plain = run_chunkd("doctor", env=env, cwd=tmp_path, timeout=60)
    asked = run_chunkd("doctor", env={**env, "CHUNKD_REQUIRE_MOUNT": "true"}, cwd=tmp_path, timeout=60)
    assert "input mount" not in plain.stdout
    assert "input mount" in asked.stdout, asked.stdout
