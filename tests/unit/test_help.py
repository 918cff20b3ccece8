"""Help per command lists that command's own options; the settings reference is `chunkd help
settings`, not repeated under every command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkd.config import SETTING_NAMES, env_name
from tests.support.cli import run_chunkd


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHUNKD_")}


@pytest.mark.parametrize("command", ["cancel", "retry", "status", "gc", "run", "verify"])
def test_command_help_is_its_own_options(command: str, tmp_path: Path) -> None:
    result = run_chunkd(command, "--help", env=env(), cwd=tmp_path)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) <= 40, result.stdout
    assert "--part-size" not in result.stdout and "--webhook-urls" not in result.stdout
    assert "chunkd help settings" in result.stdout and "--dev" in result.stdout


def test_help_settings_lists_every_setting_once(tmp_path: Path) -> None:
    result = run_chunkd("help", "settings", env={**env(), "CHUNKD_PART_SIZE": "nonsense"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # a reference, whatever the configuration says
    for name in SETTING_NAMES:
        assert result.stdout.count(f"{env_name(name)} ") == 1, name
        assert f"--{name.replace('_', '-')}" in result.stdout


def test_settings_still_work_as_flags_on_any_command(tmp_path: Path) -> None:
    result = run_chunkd("status", "--state-url", f"sqlite:///{tmp_path / 'none.db'}", env=env(), cwd=tmp_path)
    assert result.returncode == 2 and "none.db" in result.stderr
