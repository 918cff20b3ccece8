"""`python -m chunkd ...` run to completion, the way users type commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_chunkd(*args: str, env: dict[str, str], cwd: Path | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chunkd", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        check=False,  # the tests look at the exit status
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The one-line errors chunkd prints to stderr ("chunkd: ...")."""
    return [line for line in result.stderr.splitlines() if line.startswith("chunkd:")]
