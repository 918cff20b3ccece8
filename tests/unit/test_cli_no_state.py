"""Commands that only look at state (status, stats, retry, cancel) never create a state store:
run from the wrong folder they say where they looked, instead of "no streams recorded yet"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cli import error_lines, run_chunkd


def clean_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("CHUNKD_")}


@pytest.mark.parametrize(
    "command", [["status"], ["stats"], ["retry", "--failed"], ["cancel", "abc123"]]
)
def test_no_store_is_one_error_line_naming_the_setting(tmp_path: Path, command: list[str]) -> None:
    result = run_chunkd(*command, env=clean_env(), cwd=tmp_path, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "CHUNKD_STATE_URL" in lines[0], result.stderr
    assert not (tmp_path / ".chunkd").exists()
