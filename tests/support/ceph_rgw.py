"""Ceph's RADOS Gateway as a test S3 server: a throw-away one-node cluster in a temp dir.

RGW is a production S3 implementation: it checks SigV4 signatures, the signed payload SHA-256
(XAmzContentSHA256Mismatch) and Content-MD5 (BadDigest), refuses short non-last parts and wrong
part ETags, and answers NoSuchUpload for parts of an aborted upload. Where it differs from S3
(a ListParts on a completed or aborted upload is 404 NoSuchKey, a Complete after an abort is 500
InternalError), chunkd has to cope, which is why the integration tests run against it too.

The cluster is one monitor, one OSD on the in-memory `memstore` object store and radosgw, with no
manager; it starts in a few seconds. Every daemon runs in the foreground as our child and is told
to exit when the thread that started it dies, so a test run killed with SIGKILL leaves no Ceph
daemon holding ports or memory behind.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from chunkd.s3.devserver import exit_with_parent, free_port
from tests.support.bucket import empty_bucket
from tests.support.redis_server import _in_ci
from tests.support.s3_servers import make_client

RGW_ACCESS_KEY = "CHUNKDTESTACCESS0001"
RGW_SECRET_KEY = "chunkdtestsecret00000000000000000000001"
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool")
INSTALL_HINT = "apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common"

# memstore holds every object in the OSD's RAM up to this cap. Deleted and overwritten data is
# only freed by RGW's garbage collector, which by default waits two hours before it even looks:
# a run that deletes and uploads again would fill the store and then hang on timeouts.
GATEWAY = "client.rgw"  # radosgw's Ceph name: its process, log and keyring entry
MEMSTORE_BYTES = 4 * 1024**3
GC_MIN_WAIT_SECONDS = 30
GC_PERIOD_SECONDS = 15

def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def require_ceph() -> None:
    """Skip without the Ceph packages, except in CI, where a skip would hide a whole server."""
    missing = missing_binaries()
    if missing:
        message = f"Ceph RGW is not installed ({', '.join(missing)} missing: {INSTALL_HINT})"
        if _in_ci():
            pytest.fail(f"{message}; CI must run the RGW tests", pytrace=False)
        pytest.skip(message)


class CephRGW:
    """mon + memstore OSD + radosgw on 127.0.0.1:<free port>, with one S3 user.

    `stop()` kills the daemons (by the PIDs we started) and deletes the cluster: nothing survives
    it, and `start()` builds a fresh, empty cluster on the same port. `stop_gateway()` kills
    radosgw alone, an outage that keeps every object and multipart upload (they live in the
    OSD); `start_gateway()` brings it back on the same port in a fraction of a second.
    """

    host = "127.0.0.1"

    def __init__(self, *, port: int | None = None, start_timeout: float = 60.0,
                 memstore_bytes: int = MEMSTORE_BYTES) -> None:
        self._port = port
        self.start_timeout = start_timeout
        self.memstore_bytes = memstore_bytes  # the benchmark's 4 GiB file needs more than the default
        self.access_key = RGW_ACCESS_KEY
        self.secret_key = RGW_SECRET_KEY
        self.dir: Path | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self.start_seconds: float | None = None  # how long the last start() took

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"CephRGW(port={self._port}, {state})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("CephRGW has no port yet; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Every daemon up, the gateway included."""
        return GATEWAY in self._processes and all(p.poll() is None for p in self._processes.values())

    def client(self, **config: Any) -> Any:
        return make_client(self.endpoint_url, self.access_key, self.secret_key, **config)

    @property
    def pids(self) -> dict[str, int]:
        """The daemons' PIDs by name (`mon.a`, `osd.0`, `client.rgw`): the benchmark counts the CPU
        time of all three as the server's."""
        return {name: process.pid for name, process in self._processes.items()}

    def collect_garbage(self) -> None:
        """Free the space of deleted objects now (`radosgw-admin gc process --include-all`), not
        after RGW's `gc obj min wait`: a benchmark that deletes and uploads gigabytes again would
        otherwise fill the in-memory store."""
        assert self.dir is not None
        self._run("radosgw-admin", "-c", str(self.dir / "ceph.conf"), "-n", "client.rgw", "gc", "process",
                  "--include-all", timeout=300)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            return self
        if self._gateway_alone_down():  # a test's outage left it stopped: the data is still there
            self.start_gateway()
            return self
        self.stop()  # a half-dead cluster from before: start over
        began = time.monotonic()
        if self._port is None:
            self._port = free_port(self.host)
        self.dir = Path(tempfile.mkdtemp(prefix="chunkd-rgw-"))
        try:
            self._bootstrap(self.dir)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Kill every daemon we started (by its PID) and delete the cluster; safe to call twice.

        SIGKILL straight away: the data is thrown away anyway, and a clean Ceph shutdown takes
        seconds.
        """
        processes = list(self._processes.values())
        self._processes.clear()
        for process in processes:
            if process.poll() is None:
                process.kill()
        for process in processes:
            process.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def stop_gateway(self) -> None:
        """Kill radosgw alone: the endpoint refuses connections and open ones are cut, while the
        monitor and the OSD keep the data, as in an outage of the S3 front end."""
        process = self._processes.pop(GATEWAY, None)
        if process is not None:
            process.kill()
            process.wait()

    def _gateway_alone_down(self) -> bool:
        others = [process for name, process in self._processes.items() if name != GATEWAY]
        return GATEWAY not in self._processes and bool(others) and all(p.poll() is None for p in others)

    def start_gateway(self) -> None:
        """Start radosgw again on the same port, against the cluster `stop_gateway()` left running."""
        if self.dir is None:
            raise RuntimeError("CephRGW has no cluster; call start() first")
        if GATEWAY in self._processes:
            return
        self._start_radosgw(self.dir / "ceph.conf")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a daemon's log (`mon.a`, `osd.0`, `client.rgw`, or `setup`)."""
        if self.dir is None:
            return ""
        path = self.dir / "log" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- emptying -----------------------------------------------------------------------------

    def empty_bucket(self, bucket: str) -> None:
        """Create `bucket` if needed, then delete every object and abort every multipart upload."""
        empty_bucket(self.client(), bucket)

    # -- bootstrap ------------------------------------------------------------------------------

    def _bootstrap(self, root: Path) -> None:
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"Ceph RGW needs {', '.join(missing)}: {INSTALL_HINT}")
        for sub in ("mon", "osd", "rgw", "run", "log"):
            (root / sub).mkdir()
        conf = root / "ceph.conf"
        fsid = str(uuid.uuid4())
        mon_port = free_port(self.host)
        conf.write_text(_config(root, fsid=fsid, mon_port=mon_port, rgw_port=self.port,
                                memstore_bytes=self.memstore_bytes))
        keyring = root / "keyring"
        self._run("ceph-authtool", "--create-keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *",
                  str(keyring))
        self._run("ceph-authtool", "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
                  "--cap", "osd", "allow *", "--cap", "mgr", "allow *", str(keyring))
        self._run("ceph-authtool", "--gen-key", "-n", "client.rgw", "--cap", "mon", "allow rw",
                  "--cap", "osd", "allow rwx", "--cap", "mgr", "allow rw", str(keyring))
        monmap = root / "monmap"
        self._run("monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", "a",
                  f"[v2:{self.host}:{mon_port}]", str(monmap))
        self._run("ceph-mon", "-c", str(conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
                  "--keyring", str(keyring))
        self._daemon("mon.a", "ceph-mon", "-c", str(conf), "-i", "a")

        osd_uuid = str(uuid.uuid4())
        osd_key = self._run("ceph-authtool", "--gen-print-key").strip()
        secret_file = root / "osd" / "new.json"
        secret_file.write_text(json.dumps({"cephx_secret": osd_key}))
        osd_id = self._run("ceph", "-c", str(conf), "osd", "new", osd_uuid, "-i", str(secret_file)).strip()
        (root / "osd" / "keyring").write_text(f"[osd.{osd_id}]\n\tkey = {osd_key}\n")
        self._run("ceph-osd", "-c", str(conf), "-i", osd_id, "--mkfs", "--key", osd_key, "--osd-uuid", osd_uuid)
        self._daemon(f"osd.{osd_id}", "ceph-osd", "-c", str(conf), "-i", osd_id,
                     "--keyring", str(root / "osd" / "keyring"))
        self._wait(lambda: f"osd.{osd_id} up" in self._run("ceph", "-c", str(conf), "osd", "dump", check=False),
                   what=f"osd.{osd_id} to be up")

        # Creating the user also creates RGW's pools, so radosgw starts against a ready cluster.
        self._run("radosgw-admin", "-c", str(conf), "-n", "client.rgw", "user", "create", "--uid=chunkd",
                  "--display-name=chunkd", f"--access-key={self.access_key}", f"--secret={self.secret_key}",
                  timeout=120)
        self._start_radosgw(conf)

    def _start_radosgw(self, conf: Path) -> None:
        self._daemon(GATEWAY, "radosgw", "-c", str(conf), "-n", GATEWAY)
        self._wait(lambda: _answers(self.host, self.port), what=f"radosgw to answer on {self.endpoint_url}")

    def _run(self, *command: str, timeout: float = 60.0, check: bool = True) -> str:
        assert self.dir is not None
        with open(self.dir / "log" / "setup.log", "ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                    timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({result.returncode}); setup log:\n{self.log_tail('setup')}")
        return result.stdout.decode(errors="replace")

    def _daemon(self, name: str, *command: str) -> None:
        """Start a Ceph daemon in the foreground (`-f`: logs still go to its log file)."""
        assert self.dir is not None
        with open(self.dir / "log" / f"{name}.out", "ab") as out:
            self._processes[name] = subprocess.Popen(
                [*command, "-f"], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                preexec_fn=exit_with_parent(signal.SIGKILL),  # noqa: PLW1509 - prctl only
            )

    def _wait(self, ready: Callable[[], bool], *, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}) while waiting for {what}:\n"
                                       f"{self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {self.start_timeout:g}s waiting for {what}")


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


def _config(root: Path, *, fsid: str, mon_port: int, rgw_port: int, memstore_bytes: int) -> str:
    """ceph.conf of the one-node cluster; every path stays inside `root`."""
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
run dir = {root}/run
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
admin socket = {root}/run/$name.asok
keyring = {root}/keyring
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# Ceph batches monitor updates every second by default; a quick proposal makes start-up take
# seconds instead of tens of seconds.
paxos propose interval = 0.05
paxos min wait = 0.01
mon data avail warn = 1
mon data avail crit = 0
debug ms = 0

[mon]
mon data = {root}/mon
mon cluster log file = {root}/log/cluster.log

[osd]
osd data = {root}/osd
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd memory target = 1073741824
osd op num shards = 2
osd op num threads per shard = 1
osd class load list = *
osd class default list = *

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
# SSE-C over plain HTTP (RGW refuses customer keys without TLS by default): the tests have no TLS.
rgw crypt require ssl = false
rgw thread pool size = 64
rgw dynamic resharding = false
rgw enable usage log = false
rgw gc obj min wait = {GC_MIN_WAIT_SECONDS}
rgw gc processor period = {GC_PERIOD_SECONDS}
"""
