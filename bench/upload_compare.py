"""chunkd against `aws s3 cp`, `s5cmd cp` and `rclone copyto`: one file, one server, side by side.

    python -m bench.upload_compare [--size 1GiB] [--repeats 1] [--quick]

One random file is made in a temporary folder, then every tool uploads it in turn to each of two
local S3 servers: moto server (a child process, `python -m moto.server`) and `rclone serve s3`
(chunkd's own `LocalS3Server`). Each tool runs as a child process, so this process only waits
while it works (no GIL or CPU taken from the tool). After each upload the object's size is
checked with HeadObject and every object the run left (chunkd's manifest too) is deleted.
Each run uploads its own hard link to the file (same bytes, same page cache), and the file is
checked after every run: chunkd may move what it uploaded (quarantine, done folder), and a
benchmark that silently lost its input would report nonsense. chunkd also gets a fresh state
database per run and CHUNKD_DEDUP=off, CHUNKD_INVALID_MEDIA=upload, CHUNKD_AFTER_UPLOAD=keep
(where it has those settings), and the file is named `.bin`, so it is neither skipped as a
duplicate nor probed with ffprobe: the bytes are uploaded, as the other tools upload them.

Every tool gets 8 MiB parts. chunkd runs twice: with its defaults, and with
CHUNKD_PART_CONCURRENCY=8 / CHUNKD_FILE_CONCURRENCY=1; the other tools get 8 parts in flight
(`--concurrency`). aws cli and chunkd both send checksums only when required (botocore >= 1.36
would otherwise add CRC trailers that S3-compatible servers mishandle). The exact settings are
printed before the table and stored in the JSON.

Reported per (server, tool): wall time of the tool's process from spawn to exit (interpreter
start-up included: that is what a user waits for), MB/s (10^6 bytes per second), the ratio to
`aws s3 cp` on the same server (> 1 means faster than aws), peak RSS, the tool's CPU time and
the server's CPU time during the run. With several repeats, the median wall and CPU time and
the largest RSS are shown, and the tool order rotates from one repeat to the next. Each server
first takes one small untimed multipart upload, so nobody pays for its lazy start-up. Both
servers and the tool share this machine's CPUs: moto in particular is CPU-bound (one Python
process), so other work on the machine moves its numbers most; the load average at start and end
is recorded in the JSON for that reason. Prefer --repeats 3 for numbers you compare.

How peak RSS is measured
------------------------
Each tool is a direct child of this process and is reaped with `os.wait4()`, which returns the
kernel's resource usage for exactly that child. Its `ru_maxrss` is the child's peak resident set,
or that of a descendant it reaped, whichever is larger (Linux takes the max of the process's own
maxrss and its children's). It is the number `/usr/bin/time -v` prints as "Maximum resident set
size" (GNU time calls wait4 too), without needing that binary, parsing its text, or putting an
extra process between us and the tool. Rejected:

* `getrusage(RUSAGE_CHILDREN)` deltas: a high-water mark over every child ever reaped, so once a
  big tool has run, every smaller one after it reads the same number.
* polling `/proc/<pid>/status` VmHWM: a process that has exited (a zombie) no longer has one, so
  growth after the last poll is lost; helpers living between two polls are missed; and adding up
  per-process peaks overstates a tree whose processes peaked at different times.

For a tree of several processes this is the largest single process, not a sum. Each tool here is
one process (aws cli and chunkd one Python interpreter each, s5cmd and rclone one Go binary), so
the two coincide.

Results: a Markdown table on stdout; full runs also write `bench/results/upload_compare-<date>.json`.
`--quick` (64 MiB, one repeat, both servers) writes nothing, keeps under two minutes even when a
tool hangs (its runs share one time budget), and like every run exits 1 if any tool failed or
left an object of the wrong size. Temporary folders and servers are removed on every exit,
Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config

from chunkd import __version__ as chunkd_version
from chunkd.config import SETTING_NAMES, Settings, env_name, parse_size
from chunkd.devserver import LocalS3Server, find_rclone, free_port

BUCKET = "bench"
REGION = "us-east-1"
PART_SIZE = 8 * 1024 * 1024
MB = 1_000_000
MiB = 1024 * 1024
QUICK_SIZE = 64 * MiB
QUICK_BUDGET = 100.0  # seconds for all tool runs of --quick, so a hang still ends under 2 minutes
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BIN_DIR = Path(sys.executable).parent


# -- running one measured process ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measurement:
    exit_code: int
    wall_s: float
    max_rss_kib: int
    cpu_s: float  # user + system of the process (and of children it reaped)
    timed_out: bool


def run_measured(argv: Sequence[str], *, env: dict[str, str], cwd: Path, timeout: float, log: Path) -> Measurement:
    """Run argv to completion (killed after `timeout`), reaping it with wait4 for its rusage."""
    expired = threading.Event()
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C reaches us, and we end the whole group
        )

    def expire() -> None:
        expired.set()
        _kill_group(process.pid)

    timer = threading.Timer(max(timeout, 0.0), expire)
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        timer.cancel()
        _kill_group(process.pid)
        process.wait()
        raise
    timer.cancel()
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measurement(
        exit_code=process.returncode,
        wall_s=wall,
        max_rss_kib=usage.ru_maxrss,
        cpu_s=usage.ru_utime + usage.ru_stime,
        timed_out=expired.is_set(),
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a live process has used so far, from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def clean_env() -> dict[str, str]:
    """Our environment without anything that would steer a tool to another config or endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHUNKD_", "RCLONE_", "S3_"))}
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    return env


# -- servers ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    access_key: str
    secret_key: str
    pid: int | None  # the server process, for its CPU time


class ServerStartError(RuntimeError):
    pass


def _answers(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=1)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[Endpoint]:
    """`python -m moto.server` on a free loopback port, with the bucket created."""
    host, log = "127.0.0.1", workdir / "moto.log"
    for attempt in range(1, 4):
        port = free_port(host)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 30
            while not _answers(host, port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ServerStartError(f"moto server did not start on port {port}:\n{tail(log)}")
                time.sleep(0.1)
            break
        except BaseException as exc:
            _stop_process(process)
            if attempt == 3 or not isinstance(exc, ServerStartError):
                raise
    try:
        endpoint = Endpoint("moto", f"http://{host}:{port}", "testing", "testing", process.pid)
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        _stop_process(process)


@contextlib.contextmanager
def rclone_server(workdir: Path) -> Iterator[Endpoint]:
    """chunkd's `rclone serve s3` on a folder in workdir (objects are written to disk)."""
    server = LocalS3Server(workdir / "rclone-root", buckets=(BUCKET,), log_file=workdir / "rclone-serve.log")
    with server:
        # LocalS3Server does not expose its process; it is our only rclone child at this point.
        pid = next(iter(_children_named("rclone")), None)
        yield Endpoint("rclone serve s3", server.endpoint_url, server.access_key, server.secret_key, pid)


def _children_named(name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and comm == name:
            found.append(int(stat.parent.name))
    return found


SERVERS = {"moto": moto_server, "rclone": rclone_server}


def s3_client(endpoint: Endpoint) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 3, "mode": "standard"},
        ),
    )


# -- the tools --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """One upload: which server, which file, which key, and a private folder for the tool.

    `file` is a hard link to the test file inside `rundir`: a tool that moves or deletes what it
    uploaded (chunkd can quarantine a file or move it to a done folder) takes only its own link.
    """

    endpoint: Endpoint
    file: Path
    key: str
    rundir: Path


class Tool(Protocol):
    name: str

    def available(self) -> bool: ...

    def settings(self) -> dict[str, Any]: ...

    def version(self) -> str: ...

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]: ...


def _aws_env(endpoint: Endpoint) -> dict[str, str]:
    env = clean_env()
    env.update(
        AWS_ACCESS_KEY_ID=endpoint.access_key,
        AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return ((done.stdout or done.stderr).strip().splitlines() or ["unknown"])[0]


# Settings that would make chunkd do something other than upload the bytes: skip them as a
# duplicate, move the source away (quarantine, done folder) or probe it with ffprobe. Pinned only
# where this chunkd has the setting, so the benchmark runs against older and newer versions alike.
CHUNKD_PINNED = {
    "CHUNKD_DEDUP": "off",
    "CHUNKD_INVALID_MEDIA": "upload",
    "CHUNKD_AFTER_UPLOAD": "keep",
}


class ChunkdTool:
    """`chunkd upload FILE`, configured through CHUNKD_* variables, a fresh SQLite state per run."""

    def __init__(self, name: str, overrides: dict[str, str]) -> None:
        self.name = name
        self.overrides = {**self.pinned(), **overrides}

    @staticmethod
    def pinned() -> dict[str, str]:
        known = {env_name(name) for name in SETTING_NAMES}
        return {name: value for name, value in CHUNKD_PINNED.items() if name in known}

    def _argv(self) -> list[str]:
        script = BIN_DIR / "chunkd"
        return [str(script)] if script.is_file() else [sys.executable, "-m", "chunkd"]

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return f"chunkd {chunkd_version}"

    def settings(self) -> dict[str, Any]:
        defaults = Settings()
        shown = {
            "CHUNKD_PART_SIZE": f"{defaults.part_size // MiB}MiB (default)",
            "CHUNKD_PART_SCHEDULE": f"{defaults.part_schedule} (default)",
            "CHUNKD_PART_CONCURRENCY": f"{defaults.part_concurrency} (default)",
            "CHUNKD_FILE_CONCURRENCY": f"{defaults.file_concurrency} (default)",
            "CHUNKD_LOG_FORMAT": "json",
            "CHUNKD_LOG_LEVEL": "WARNING",
            "CHUNKD_STATE_URL": "sqlite:///<run dir>/state.db (fresh per run)",
        }
        shown.update(self.overrides)
        return shown

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        env = _aws_env(job.endpoint)
        prefix = job.key.rsplit("/", 1)[0]
        env.update(
            CHUNKD_S3_ENDPOINT_URL=job.endpoint.url,
            CHUNKD_BUCKET=BUCKET,
            CHUNKD_STATE_URL=f"sqlite:///{job.rundir / 'state.db'}",
            CHUNKD_KEY_TEMPLATE=f"{prefix}/{{relpath}}",  # relpath of a file given by path: its name
            CHUNKD_LOG_FORMAT="json",
            CHUNKD_LOG_LEVEL="WARNING",
        )
        env.update(self.overrides)
        return [*self._argv(), "upload", str(job.file)], env


class AwsCliTool:
    """`aws s3 cp`, with its own config file written by `aws configure set` in our temp folder."""

    name = "aws s3 cp"

    def __init__(self, workdir: Path, concurrency: int) -> None:
        self.binary = shutil.which("aws", path=clean_env()["PATH"])
        self.config = workdir / "aws" / "config"
        self.values = {
            "default.s3.multipart_threshold": "8MB",
            "default.s3.multipart_chunksize": "8MB",  # aws cli reads MB as MiB
            "default.s3.max_concurrent_requests": str(concurrency),
            "default.request_checksum_calculation": "when_required",
            "default.response_checksum_validation": "when_required",
        }
        self._configured = False

    def available(self) -> bool:
        return self.binary is not None

    def version(self) -> str:
        return _first_line([self.binary or "aws", "--version"])

    def settings(self) -> dict[str, Any]:
        return {**self.values, "flags": "--no-progress --only-show-errors"}

    def _env(self, endpoint: Endpoint) -> dict[str, str]:
        env = _aws_env(endpoint)
        env["AWS_CONFIG_FILE"] = str(self.config)
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(self.config.with_name("credentials"))
        return env

    def configure(self) -> None:
        if self._configured or self.binary is None:
            return
        self.config.parent.mkdir(parents=True, exist_ok=True)
        env = self._env(Endpoint("", "", "", "", None))
        for name, value in self.values.items():
            subprocess.run([self.binary, "configure", "set", name, value], env=env, check=True, timeout=60)
        self._configured = True

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        self.configure()
        argv = [
            str(self.binary), "s3", "cp", str(job.file), f"s3://{BUCKET}/{job.key}",
            "--endpoint-url", job.endpoint.url, "--no-progress", "--only-show-errors",
        ]
        return argv, self._env(job.endpoint)


class S5cmdTool:
    name = "s5cmd cp"

    def __init__(self, workdir: Path, concurrency: int) -> None:
        self.binary = shutil.which("s5cmd", path=clean_env()["PATH"])
        self.workdir = workdir
        self.concurrency = concurrency

    def available(self) -> bool:
        return self.binary is not None

    def version(self) -> str:
        return "s5cmd " + _first_line([self.binary or "s5cmd", "version"])

    def settings(self) -> dict[str, Any]:
        return {"--part-size": f"{PART_SIZE // MiB} (MiB)", "--concurrency": self.concurrency, "--log": "error"}

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        env = _aws_env(job.endpoint)
        env["AWS_CONFIG_FILE"] = str(self.workdir / "aws" / "config")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(self.workdir / "aws" / "credentials")
        argv = [
            str(self.binary), "--endpoint-url", job.endpoint.url, "--log", "error",
            "cp", "--concurrency", str(self.concurrency), "--part-size", str(PART_SIZE // MiB),
            str(job.file), f"s3://{BUCKET}/{job.key}",
        ]
        return argv, env


class RcloneTool:
    """`rclone copyto` to a remote defined only by RCLONE_CONFIG_BENCH_* variables."""

    name = "rclone copyto"

    def __init__(self, concurrency: int) -> None:
        try:
            self.binary: str | None = find_rclone()
        except Exception:  # noqa: BLE001 - no rclone means the tool is skipped
            self.binary = None
        self.remote = {
            "TYPE": "s3",
            "PROVIDER": "Other",
            "REGION": REGION,
            "FORCE_PATH_STYLE": "true",
            "CHUNK_SIZE": "8M",  # rclone's M is MiB
            "UPLOAD_CUTOFF": "8M",  # else files under 200M go up as one PUT
            "UPLOAD_CONCURRENCY": str(concurrency),
        }

    def available(self) -> bool:
        return self.binary is not None

    def version(self) -> str:
        return _first_line([self.binary or "rclone", "version"])

    def settings(self) -> dict[str, Any]:
        shown: dict[str, Any] = {f"RCLONE_CONFIG_BENCH_{k}": v for k, v in self.remote.items()}
        shown["flags"] = "--s3-no-check-bucket"
        return shown

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        env = clean_env()
        env["RCLONE_CONFIG"] = os.devnull
        remote = {
            **self.remote,
            "ENDPOINT": job.endpoint.url,
            "ACCESS_KEY_ID": job.endpoint.access_key,
            "SECRET_ACCESS_KEY": job.endpoint.secret_key,
        }
        env.update({f"RCLONE_CONFIG_BENCH_{k}": v for k, v in remote.items()})
        argv = [str(self.binary), "copyto", str(job.file), f"bench:{BUCKET}/{job.key}", "--s3-no-check-bucket"]
        return argv, env


def build_tools(workdir: Path, *, concurrency: int, chunkd_env: dict[str, str]) -> list[Tool]:
    return [
        AwsCliTool(workdir, concurrency),
        ChunkdTool("chunkd", dict(chunkd_env)),
        ChunkdTool("chunkd p8/f1", {**chunkd_env, "CHUNKD_PART_CONCURRENCY": "8", "CHUNKD_FILE_CONCURRENCY": "1"}),
        S5cmdTool(workdir, concurrency),
        RcloneTool(concurrency),
    ]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# -- one run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    server: str
    tool: str
    repeat: int
    ok: bool
    error: str | None = None
    exit_code: int | None = None
    wall_s: float | None = None
    mb_per_s: float | None = None
    max_rss_mib: float | None = None
    cpu_s: float | None = None
    server_cpu_s: float | None = None
    object_size: int | None = None


class Budget:
    """Seconds left for tool runs (unlimited unless given)."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def cap(self, timeout: float) -> float:
        return timeout if self.deadline is None else min(timeout, self.deadline - time.monotonic())


def run_one(tool: Tool, job: Job, *, source: Path, size: int, timeout: float, repeat: int) -> RunResult:
    result = RunResult(job.endpoint.name, tool.name, repeat, ok=False)
    if timeout <= 1:
        result.error = "skipped: time budget used up"
        return result
    job.rundir.mkdir(parents=True)
    os.link(source, job.file)
    argv, env = tool.command(job)
    server_before = process_cpu_s(job.endpoint.pid)
    measured = run_measured(argv, env=env, cwd=job.rundir, timeout=timeout, log=job.rundir / "tool.log")
    server_after = process_cpu_s(job.endpoint.pid)
    result.exit_code = measured.exit_code
    result.wall_s = round(measured.wall_s, 3)
    result.mb_per_s = round(size / measured.wall_s / MB, 1)
    result.max_rss_mib = round(measured.max_rss_kib / 1024, 1)
    result.cpu_s = round(measured.cpu_s, 2)
    if server_before is not None and server_after is not None:
        result.server_cpu_s = round(server_after - server_before, 2)
    if measured.timed_out:
        result.error = f"timed out after {timeout:.1f}s; log ends:\n{tail(job.rundir / 'tool.log')}"
    elif measured.exit_code != 0:
        result.error = f"exit status {measured.exit_code}; log ends:\n{tail(job.rundir / 'tool.log')}"
    result.object_size, problem = verify_and_delete(job, size)
    result.error = result.error or problem
    result.ok = result.error is None
    return result


def verify_and_delete(job: Job, size: int) -> tuple[int | None, str | None]:
    """HeadObject must show the file's size; then remove everything under the run's prefix."""
    client = s3_client(job.endpoint)
    problem: str | None = None
    found: int | None = None
    try:
        found = int(client.head_object(Bucket=BUCKET, Key=job.key)["ContentLength"])
        if found != size:
            problem = f"object {job.key} is {found} bytes, file is {size}"
    except client.exceptions.ClientError as exc:
        problem = f"HeadObject {job.key}: {exc}"
    prefix = job.key.rsplit("/", 1)[0] + "/"
    with contextlib.suppress(Exception):  # a leftover object cannot skew later runs: keys are unique
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        for item in listing.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return found, problem


# -- the whole benchmark ----------------------------------------------------------------------


def warm_up(endpoint: Endpoint) -> None:
    """One small multipart upload, untimed: the first tool must not pay for the server's lazy
    start-up (moto imports and builds its S3 backend on first use)."""
    client = s3_client(endpoint)
    key = "warm-up/object"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etag = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)["ETag"]
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    client.head_object(Bucket=BUCKET, Key=key)
    client.delete_object(Bucket=BUCKET, Key=key)


def make_file(path: Path, size: int) -> None:
    """Random (incompressible) bytes, flushed to disk so write-back does not overlap a run."""
    block = 8 * MiB
    with open(path, "wb") as out:
        remaining = size
        while remaining > 0:
            out.write(os.urandom(min(block, remaining)))
            remaining -= block
        out.flush()
        os.fsync(out.fileno())


def run_all(
    tools: list[Tool], servers: list[str], *, file: Path, workdir: Path, repeats: int, timeout: float, budget: Budget
) -> list[RunResult]:
    size = file.stat().st_size
    identity = _identity(file)
    results: list[RunResult] = []
    for server_name in servers:
        try:
            with SERVERS[server_name](workdir) as endpoint:
                print(f"\n## {endpoint.name} at {endpoint.url}", flush=True)
                warm_up(endpoint)
                for repeat in range(1, repeats + 1):
                    shift = (repeat - 1) % len(tools)
                    for tool in tools[shift:] + tools[:shift]:
                        key = f"{slug(tool.name)}/r{repeat}/{file.name}"
                        rundir = workdir / "runs" / server_name / slug(tool.name) / f"r{repeat}"
                        job = Job(endpoint, rundir / file.name, key, rundir)
                        result = run_one(tool, job, source=file, size=size, timeout=budget.cap(timeout), repeat=repeat)
                        results.append(result)
                        print(progress_line(result), flush=True)
                        check_source(file, identity)
                        os.sync()  # the server's writes of this run must not slow the next one
        except ServerStartError as exc:
            print(f"server {server_name} failed to start: {exc}", file=sys.stderr)
            results.append(RunResult(server_name, "(server)", 0, ok=False, error=str(exc)))
        except SourceDamaged as exc:
            print(f"stopping: {exc}", file=sys.stderr)
            results.append(RunResult(server_name, "(test file)", 0, ok=False, error=str(exc)))
            break
    return results


class SourceDamaged(RuntimeError):
    """The test file changed during a run: every later number would be meaningless."""


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def check_source(path: Path, identity: tuple[int, int, int]) -> None:
    try:
        now = _identity(path)
    except FileNotFoundError:
        raise SourceDamaged(f"the test file {path} was removed during the last run") from None
    if now != identity:
        raise SourceDamaged(f"the test file {path} was changed during the last run")


def progress_line(result: RunResult) -> str:
    if result.wall_s is None:
        return f"  {result.tool:<14} r{result.repeat}: {result.error}"
    status = "ok" if result.ok else "FAILED: " + (result.error or "")
    return (
        f"  {result.tool:<14} r{result.repeat}: {result.wall_s:7.2f} s {result.mb_per_s:7.1f} MB/s"
        f"  RSS {result.max_rss_mib:6.1f} MiB  CPU {result.cpu_s:6.2f} s"
        f"  server CPU {result.server_cpu_s if result.server_cpu_s is not None else '-'} s  {status}"
    )


def summarize(results: list[RunResult], tools: list[Tool], servers: list[str], size: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    server_names = {"moto": "moto", "rclone": "rclone serve s3"}
    for server in [server_names[s] for s in servers]:
        baseline: float | None = None
        for tool in tools:
            runs = [r for r in results if r.server == server and r.tool == tool.name]
            good = [r for r in runs if r.ok and r.wall_s]
            row: dict[str, Any] = {"server": server, "tool": tool.name, "runs": len(runs), "failed": len(runs) - len(good)}
            if not tool.available():
                row["status"] = "not installed"
            elif not runs:
                row["status"] = "not run"
            elif good:
                wall = statistics.median(r.wall_s for r in good if r.wall_s)
                row.update(
                    wall_s=round(wall, 2),
                    mb_per_s=round(size / wall / MB, 1),
                    max_rss_mib=max(r.max_rss_mib or 0 for r in good),
                    cpu_s=round(statistics.median(r.cpu_s or 0 for r in good), 2),
                    server_cpu_s=round(statistics.median(r.server_cpu_s or 0 for r in good), 2),
                    status="ok" if len(good) == len(runs) else f"{len(runs) - len(good)} of {len(runs)} failed",
                )
                if isinstance(tool, AwsCliTool):
                    baseline = wall
            else:
                row["status"] = "FAILED: " + (runs[0].error or "").splitlines()[0]
            rows.append(row)
        for row in rows:
            if row["server"] == server and baseline and row.get("wall_s"):
                row["vs_aws"] = round(baseline / row["wall_s"], 2)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], name: str, fmt: str = "{}") -> str:
        value = row.get(name)
        return "–" if value is None else fmt.format(value)

    lines = [
        "| server | tool | wall s | MB/s | × aws | peak RSS MiB | tool CPU s | server CPU s | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['server']} | {row['tool']} | {cell(row, 'wall_s', '{:.2f}')} | {cell(row, 'mb_per_s', '{:.1f}')}"
            f" | {cell(row, 'vs_aws', '{:.2f}×')} | {cell(row, 'max_rss_mib', '{:.0f}')} | {cell(row, 'cpu_s', '{:.1f}')}"
            f" | {cell(row, 'server_cpu_s', '{:.1f}')} | {row['status']} |"
        )
    return "\n".join(lines)


def describe_setup(tools: list[Tool], size: int, repeats: int, concurrency: int) -> dict[str, Any]:
    return {
        "file_size": size,
        "repeats": repeats,
        "part_size": PART_SIZE,
        "peer_concurrency": concurrency,
        "host": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
            "platform": platform.platform(),
            "python": platform.python_version(),
            "moto": importlib.metadata.version("moto"),
            "boto3": importlib.metadata.version("boto3"),
        },
        "tools": {
            tool.name: {"available": tool.available(), "version": tool.version() if tool.available() else None,
                        "settings": tool.settings()}
            for tool in tools
        },
    }


def print_setup(setup: dict[str, Any]) -> None:
    print(f"# upload_compare: {setup['file_size'] / MiB:.0f} MiB random file, {setup['repeats']} repeat(s), "
          f"{setup['host']['cpus']} CPUs (load average {setup['host']['load_average_at_start'][0]}), "
          f"moto {setup['host']['moto']}")
    for name, tool in setup["tools"].items():
        if not tool["available"]:
            print(f"- {name}: not installed, skipped")
            continue
        settings = ", ".join(f"{k}={v}" for k, v in tool["settings"].items())
        print(f"- {name} ({tool['version']}): {settings}")


def write_json(payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"upload_compare-{datetime.date.today().isoformat()}"
    path, n = RESULTS_DIR / f"{stem}.json", 1
    while path.exists():  # never overwrite an earlier run of the same day
        n += 1
        path = RESULTS_DIR / f"{stem}-{n}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.upload_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="test file size (default 1GiB)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool and server (default 1)")
    parser.add_argument("--quick", action="store_true", help="64 MiB, one repeat, no JSON, under 2 minutes")
    parser.add_argument("--servers", default="moto,rclone", help="comma list of: moto, rclone")
    parser.add_argument("--tools", default=None, help="comma list of tools to keep, by name or first word: aws,chunkd,s5cmd,rclone (default: all)")
    parser.add_argument("--concurrency", type=int, default=8, help="parts in flight for aws, s5cmd, rclone (8)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default 30 + size at 5 MB/s)")
    parser.add_argument(
        "--chunkd-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra CHUNKD_* setting for both chunkd variants (repeatable)",
    )
    args = parser.parse_args(argv)
    args.size = QUICK_SIZE if args.quick else parse_size(args.size)
    args.repeats = 1 if args.quick else args.repeats
    if args.size < 1 or args.repeats < 1:
        parser.error("--size and --repeats must be positive")
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - set(SERVERS):
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    try:
        args.chunkd_env = dict(item.split("=", 1) for item in args.chunkd_env)
    except ValueError:
        parser.error("--chunkd-env takes NAME=VALUE")
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timeout = args.timeout or 30 + args.size / (5 * MB)
    budget = Budget(QUICK_BUDGET if args.quick else None)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="chunkd-bench-"))
    try:
        tools: list[Tool] = build_tools(workdir, concurrency=args.concurrency, chunkd_env=args.chunkd_env)
        if args.tools:
            wanted = {name.strip() for name in args.tools.split(",")}
            tools = [t for t in tools if wanted & {t.name, slug(t.name), t.name.split()[0]}]
        setup = describe_setup(tools, args.size, args.repeats, args.concurrency)
        print_setup(setup)
        file = workdir / f"bench-{args.size}.bin"  # not a video name: chunkd does not ffprobe it
        make_file(file, args.size)
        runnable = [t for t in tools if t.available()]
        results = run_all(runnable, args.servers, file=file, workdir=workdir, repeats=args.repeats,
                          timeout=timeout, budget=budget)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temporary files removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    rows = summarize(results, tools, args.servers, args.size)
    print("\n" + markdown_table(rows))
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(f"\nFAILED {result.server} / {result.tool} r{result.repeat}: {result.error}", file=sys.stderr)
    if not args.quick:
        path = write_json({**setup, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                           "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                           "summary": rows, "runs": [dataclasses.asdict(r) for r in results]})
        print(f"\nresults written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
