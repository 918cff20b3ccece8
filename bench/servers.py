"""The S3 servers every tool is pointed at, and a byte-counting proxy in front of them.

* `rclone serve s3` on a folder (chunkd's `LocalS3Server`): objects are written to disk; a Go
  server that is rarely the bottleneck.
* moto server (`python -m moto.server`, a child process): keeps objects in its own memory and is
  CPU-bound (one Python process), so it shows how each tool behaves against a slow server.
* Ceph RGW (the tests' one-node cluster, tests/support/ceph_rgw.py): a production S3 server that
  checks signatures, payload SHA-256s and Content-MD5s; objects live in the OSD's memory, freed
  after every run (`collect_garbage`) so gigabytes of uploads never fill it.

The proxy counts the bytes every client sends, whatever the tool: the fair way to measure what a
resumed upload sends again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import boto3
from botocore.config import Config

from bench.measure import tail
from chunkd.s3.devserver import LocalS3Server, free_port

BUCKET = "bench"
REGION = "us-east-1"
SERVER_NAMES = {"rclone": "rclone serve s3", "moto": "moto", "rgw": "Ceph RGW"}
RGW_MEMSTORE_BYTES = 10 * 1024**3  # the memory scenario's 4 GiB file, and room for a run not yet freed


@dataclasses.dataclass(frozen=True)
class Endpoint:
    key: str  # "rclone", "moto" or "rgw"
    url: str
    access_key: str
    secret_key: str
    pid: int | None  # the server process, for its CPU time
    root: Path | None = None  # where rclone keeps the bucket's files, for a fast clean-up
    helper_pids: tuple[int, ...] = ()  # more processes doing the server's work (RGW's OSD and monitor)
    collect: Callable[[], None] | None = None  # frees deleted objects' space now (RGW's garbage collector)

    @property
    def pids(self) -> tuple[int, ...]:
        """Every process whose CPU time is the server's."""
        return ((self.pid,) if self.pid is not None else ()) + self.helper_pids

    @property
    def name(self) -> str:
        return SERVER_NAMES[self.key]

    def via(self, url: str) -> Endpoint:
        """The same server reached through another address (the counting proxy)."""
        return dataclasses.replace(self, url=url)


class ServerStartError(RuntimeError):
    pass


def clean_env(extra_path: Path | None = None) -> dict[str, str]:
    """Our environment without anything that would steer a tool to another config or endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHUNKD_", "RCLONE_", "S3_"))}
    path = env.get("PATH", "")
    if extra_path is not None:
        path = f"{extra_path}{os.pathsep}{path}"
    env["PATH"] = path
    return env


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
    root = workdir / "rclone-root"
    server = LocalS3Server(root, buckets=(BUCKET,), log_file=workdir / "rclone-serve.log")
    try:
        server.start()
    except Exception as exc:
        raise ServerStartError(str(exc)) from exc
    try:
        # LocalS3Server does not expose its process; it is our only rclone child at this point.
        pid = next(iter(_children_named("rclone")), None)
        yield Endpoint("rclone", server.endpoint_url, server.access_key, server.secret_key, pid, root / BUCKET)
    finally:
        server.stop()


@contextlib.contextmanager
def rgw_server(workdir: Path) -> Iterator[Endpoint]:
    """A fresh one-node Ceph RGW (mon, memstore OSD, radosgw) with the bucket created; the
    cluster lives in its own temporary folder and is deleted on exit."""
    from tests.support.ceph_rgw import CephRGW  # imports pytest and moto: only when RGW is asked for

    server = CephRGW(memstore_bytes=RGW_MEMSTORE_BYTES)
    try:
        server.start()
    except Exception as exc:
        raise ServerStartError(str(exc)) from exc
    try:
        pids = server.pids
        gateway = pids.pop("client.rgw", None)
        endpoint = Endpoint("rgw", server.endpoint_url, server.access_key, server.secret_key, gateway,
                            helper_pids=tuple(pids.values()), collect=server.collect_garbage)
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


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


SERVERS = {"rclone": rclone_server, "moto": moto_server, "rgw": rgw_server}


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


def list_objects(endpoint: Endpoint, prefix: str) -> dict[str, int]:
    """Every key under prefix with its size."""
    client = s3_client(endpoint)
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = int(item["Size"])
    return found


def delete_prefix(endpoint: Endpoint, prefix: str) -> None:
    """Remove what a run left, so the server's storage never grows over a benchmark.

    rclone's objects are plain files: removing the folder is much faster than 5,000 DeleteObject
    calls. Keys are unique per run, so rclone's short directory cache cannot confuse a later run.
    """
    if endpoint.root is not None:
        shutil.rmtree(endpoint.root / prefix.strip("/"), ignore_errors=True)
        return
    client = s3_client(endpoint)
    with contextlib.suppress(Exception):  # a leftover object cannot skew later runs: keys are unique
        keys = list(list_objects(endpoint, prefix))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": batch, "Quiet": True})
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=BUCKET, Prefix=prefix):
            for upload in page.get("Uploads", []):  # a killed tool's: their parts hold space too
                client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    if endpoint.collect is not None:
        try:
            endpoint.collect()
        except Exception as exc:  # noqa: BLE001 - later runs may slow down as the store fills: say so
            print(f"  garbage collection on {endpoint.name} failed: {exc}", flush=True)


class CountingProxy:
    """A TCP relay on a loopback port that counts every byte clients send to the server.

    Counted at the socket level, so it is the same yardstick for every tool: request lines,
    headers, bodies, retries and the parts a killed tool had in flight all count as sent.
    """

    def __init__(self, upstream_url: str) -> None:
        host_port = upstream_url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        self.upstream = (host, int(port))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sent = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="bench-proxy", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._sent

    def reset(self) -> None:
        with self._lock:
            self._sent = 0

    def _count(self, n: int) -> None:
        with self._lock:
            self._sent += n

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for source, target, count in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, target, count), name="bench-proxy-pump", daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        buffer = bytearray(256 * 1024)
        view = memoryview(buffer)
        try:
            while True:
                n = source.recv_into(buffer)
                if not n:
                    break
                if count:
                    self._count(n)
                target.sendall(view[:n])
        except OSError:
            pass
        finally:
            for sock, how in ((target, socket.SHUT_WR), (source, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)
            if not count:  # the server→client side ends last: close both
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.close()
