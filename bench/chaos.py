"""kill -9 campaign: SIGKILL a real `chunkd run` at chosen moments, restart it, verify every object.

    python -m bench.chaos --trials N [--seed S] [--state sqlite|redis|mixed] [--server moto|rclone|rgw]
                          [--json out.json] [--keep]
    python -m bench.chaos --replay TRIAL_SEED [--state ...]     # one trial again, same plan

Each trial gets a fresh drop folder, fresh state (a SQLite file, or a flushed database on one
redis-server the campaign starts; `mixed` alternates) and a fresh bucket on one S3 server for the
campaign: moto running in this process (a WSGI layer sees every request), or `rclone serve s3`
(chunkd's --dev server) or a one-node Ceph RGW (the strict server) behind a small loopback proxy
that sees the same.
The folder holds mixed files: two small ones present at start, one small one dropped a moment
later, one large one (several parts, sometimes an exact multiple of the part size) and one growing
file appended by a writer thread for a few seconds (multipart, its tail sent at finalize).

The daemon is killed 1-3 times per trial, each kill at one of these moments, observed on the
server side (chunkd has no hooks for this):

* part_upload         a data request (UploadPart, or the PutObject of a small file) when a random
                      fraction of its body has been read by the server;
* after_part_ack      0-5 ms after the k-th data request's 200 response was written: acknowledged,
                      maybe not yet checkpointed;
* complete            as CompleteMultipartUpload arrives: `dropped` (the server never applies it)
                      or `applied` (applied, the daemon dies before reading the answer);
* manifest            the same two variants for the PutObject of a manifest;
* after_upload_action with CHUNKD_AFTER_UPLOAD=delete|move: 0-30 ms after a manifest was stored
                      (between verify, COMPLETED and the action), or the moment a source file
                      leaves the drop folder;
* random              at a random time after the daemon was started (start-up included).

A kill whose moment never comes (the work was already done) is counted as missed. After the last
kill the daemon is started once more and left to finish; then it gets SIGTERM and must exit 0.

Verified per trial: every source file has an object whose SHA-256 equals the source's (the object
is downloaded), a manifest with the right key, size and SHA-256 whose parts tile the object and
whose part SHA-256s match the object's bytes, an ETag equal to HeadObject's; `chunkd status
--json` shows the file COMPLETED and no stream FAILED, QUARANTINED or unfinished; the local file
was kept, deleted or moved as configured; nothing else is in the bucket. Any miss fails the trial.

Counted from the bodies the server read: bytes sent in UploadPart/PutObject (manifests apart), and
so bytes re-sent beyond the file sizes; data requests for a (key, part) the server had already
acknowledged, per daemon run (bounded by the parts that can be in flight when a kill lands); and
multipart uploads left unfinished in the bucket (harmless: `chunkd gc` aborts them). Acknowledged
means answered 200 while the daemon was alive: the server goes on with requests already under way
when the daemon dies and answers them to a dead socket; those are counted apart, and a restarted
daemon that lists the parts before the server stored such a part rightly sends it again.
Each trial folder gets `requests.jsonl`: every request and kill, in order, with times.

A trial's plan (files, kills, timings) comes from its seed; timing on the machine does not, so a
replay repeats the plan, not necessarily the exact interleaving. Failed trials keep their folder
(daemon logs, state) and the summary prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import hashlib
import http.client
import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import redis
from botocore.exceptions import ClientError
from werkzeug.wsgi import ClosingIterator

from bench.units import KiB, MiB
from chunkd.errors import ChunkdError
from chunkd.model.manifest import parse_manifest
from chunkd.model.states import StreamState
from chunkd.ops.verify import check_etag
from chunkd.s3.devserver import LocalS3Server
from chunkd.s3.traits import PROBE_NAME
from chunkd.store import open_store
from tests.support.ceph_rgw import CephRGW
from tests.support.daemon import DaemonProcess, daemon_env
from tests.support.loopback_proxy import LoopbackProxy, RelayHandler, put_request, send_answer
from tests.support.redis_server import RedisServer
from tests.support.s3_servers import (
    MotoServer,
    S3Request,
    _raw_path,
    classify,
    make_client,
)

PART_SIZE = 5 * MiB
MANIFEST_SUFFIX = ".manifest.json"
IDLE_SECONDS = 2.0  # far above the growing file's pauses between writes (<= 0.15 s)
FILE_CONCURRENCY = 4
PART_CONCURRENCY = 4
IN_FLIGHT_BOUND = FILE_CONCURRENCY * PART_CONCURRENCY  # data requests a daemon can have open
RUN_TIMEOUT = 90.0  # seconds one daemon run may take to be killed or to finish the trial
DATA_OPERATIONS = frozenset({"UploadPart", "PutObject"})
SERVERS = ("moto", "rclone", "rgw")


class Phase(str, enum.Enum):
    PART_UPLOAD = "part_upload"
    AFTER_PART_ACK = "after_part_ack"
    COMPLETE = "complete"
    MANIFEST = "manifest"
    AFTER_UPLOAD_ACTION = "after_upload_action"
    RANDOM = "random"


# -- the plan of a trial ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KillSpec:
    """When to kill: the nth matching event of one daemon run, and how (see the module doc)."""

    phase: Phase
    nth: int = 1
    fraction: float = 0.5  # part_upload: share of the body read by the server
    delay: float = 0.0  # after_part_ack, after_upload_action: seconds after the response
    variant: str = ""  # complete/manifest: dropped|applied; after_upload_action: after_manifest|source_gone
    at: float = 0.0  # random: seconds after the daemon started

    def describe(self) -> str:
        what = {
            Phase.PART_UPLOAD: f"data request #{self.nth} at {self.fraction:.0%} of its body",
            Phase.AFTER_PART_ACK: f"{self.delay * 1000:.1f} ms after data request #{self.nth} was acknowledged",
            Phase.COMPLETE: f"CompleteMultipartUpload #{self.nth} ({self.variant})",
            Phase.MANIFEST: f"manifest PutObject #{self.nth} ({self.variant})",
            Phase.AFTER_UPLOAD_ACTION: (
                f"{self.delay * 1000:.1f} ms after manifest #{self.nth} was stored"
                if self.variant == "after_manifest" else "when a source file leaves the drop folder"
            ),
            Phase.RANDOM: f"{self.at:.2f} s after start",
        }
        return f"{self.phase.value}: {what[self.phase]}"


@dataclasses.dataclass(frozen=True)
class FileSpec:
    relpath: str
    kind: str  # small | late | large | growing
    size: int
    seed: int
    initial: int = 0  # growing: bytes present at start
    chunks: tuple[int, ...] = ()  # growing: sizes of the appends
    pauses: tuple[float, ...] = ()  # growing: seconds before each append; late: delay before it appears


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    seed: int
    state: str  # sqlite | redis
    after_upload: str  # keep | delete | move
    files: tuple[FileSpec, ...]
    kills: tuple[KillSpec, ...]
    restart_pauses: tuple[float, ...]


def plan_trial(seed: int, state: str) -> TrialPlan:
    rng = random.Random(seed)
    files = _plan_files(rng)
    phases = list(Phase)
    lead = phases[seed % len(phases)]  # trial_seeds() cycles this, so a short campaign covers every phase
    kills = tuple(_plan_kill(rng, lead if n == 0 else rng.choice(phases)) for n in range(rng.choice((1, 2, 3))))
    if any(kill.phase is Phase.AFTER_UPLOAD_ACTION for kill in kills):
        after_upload = rng.choice(("delete", "move"))
    else:
        after_upload = rng.choice(("keep", "delete", "move"))
    pauses = tuple(round(rng.uniform(0.0, 0.3), 3) for _ in kills)
    return TrialPlan(seed, state, after_upload, files, kills, pauses)


def _plan_files(rng: random.Random) -> tuple[FileSpec, ...]:
    def seed() -> int:
        return rng.getrandbits(32)

    smalls = [FileSpec(f"small-{n}.bin", "small", rng.randint(50 * KiB, 300 * KiB), seed()) for n in range(2)]
    late = FileSpec("later/late.bin", "late", rng.randint(50 * KiB, 300 * KiB), seed(),
                    pauses=(round(rng.uniform(0.5, 3.0), 3),))
    if rng.random() < 0.25:  # the last part exactly full
        large_size = rng.choice((6, 7, 8)) * PART_SIZE
    else:
        large_size = rng.randint(30 * MiB, 40 * MiB)
    large = FileSpec("large.bin", "large", large_size, seed())
    target = rng.randint(6 * MiB, 14 * MiB)
    initial = rng.randint(0, MiB)
    chunks: list[int] = []
    while initial + sum(chunks) < target:
        chunks.append(min(rng.randint(64 * KiB, 512 * KiB), target - initial - sum(chunks)))
    pauses = tuple(round(rng.uniform(0.04, 0.12), 3) for _ in chunks)
    growing = FileSpec("rec/growing.bin", "growing", target, seed(), initial=initial, chunks=tuple(chunks),
                       pauses=pauses)
    return (*smalls, late, large, growing)


def _plan_kill(rng: random.Random, phase: Phase) -> KillSpec:
    if phase is Phase.PART_UPLOAD:
        return KillSpec(phase, nth=rng.randint(1, 6), fraction=round(rng.uniform(0.05, 0.95), 3))
    if phase is Phase.AFTER_PART_ACK:
        return KillSpec(phase, nth=rng.randint(1, 6), delay=round(rng.uniform(0.0, 0.005), 4))
    if phase in (Phase.COMPLETE, Phase.MANIFEST):
        top = 2 if phase is Phase.COMPLETE else 5
        return KillSpec(phase, nth=rng.randint(1, top), variant=rng.choice(("dropped", "applied")))
    if phase is Phase.AFTER_UPLOAD_ACTION:
        variant = rng.choice(("after_manifest", "source_gone"))
        return KillSpec(phase, nth=rng.randint(1, 5), delay=round(rng.uniform(0.0, 0.03), 4), variant=variant)
    return KillSpec(phase, at=round(rng.uniform(0.3, 5.0), 3))


def file_bytes(spec: FileSpec) -> bytes:
    return random.Random(spec.seed).randbytes(spec.size)


# -- what the server sees --------------------------------------------------------------------


@dataclasses.dataclass
class RequestEvent:
    """One request as the server handled it; mutated by the request's own thread only."""

    index: int
    run: int
    operation: str
    key: str
    part_number: int | None
    upload_id: str | None
    content_length: int
    bytes_read: int = 0
    status: int | None = None
    answered: bool = False  # the whole response was written to the socket
    dropped: bool = False  # not passed to the server (a `dropped` kill)
    arrived_at: float = dataclasses.field(default_factory=time.monotonic)
    answered_at: float | None = None

    def answer(self) -> None:
        self.answered_at = time.monotonic()
        self.answered = True

    @property
    def data(self) -> bool:
        """Carries file bytes: a part, or a small file's PutObject (not a manifest, nor the start-up
        probe of whether the server checks signed SHA-256s)."""
        return (self.operation in DATA_OPERATIONS and not self.key.endswith(MANIFEST_SUFFIX)
                and PROBE_NAME not in self.key)

    @property
    def manifest(self) -> bool:
        return self.operation == "PutObject" and self.key.endswith(MANIFEST_SUFFIX)

    def acknowledged(self, killed_at: float | None) -> bool:
        """Answered 200 while the daemon that sent it was still alive to read the answer."""
        if not self.answered or self.status != 200 or self.answered_at is None:
            return False
        return killed_at is None or self.answered_at < killed_at

    def to_dict(self, origin: float) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["arrived_at"] = round(self.arrived_at - origin, 4)
        data["answered_at"] = None if self.answered_at is None else round(self.answered_at - origin, 4)
        return data


class CountingInput:
    """The request body as the server reads it, counting bytes and reporting progress."""

    def __init__(self, raw: Any, on_read: Callable[[int], None]) -> None:
        self._raw = raw
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        return self._seen(self._raw.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._seen(self._raw.readline(size))

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer) or 0
        if count:
            self._on_read(count)
        return count

    def _seen(self, data: bytes) -> bytes:
        if data:
            self._on_read(len(data))
        return data


class Observer:
    """Every request of the campaign, in arrival order, handed to the kill switch as it goes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[RequestEvent] = []
        self.run = 0
        self.switch: KillSwitch | None = None

    def begin(self, request: S3Request, content_length: int) -> RequestEvent:
        with self._lock:
            event = RequestEvent(len(self.events), self.run, request.operation, request.key,
                                 request.part_number, request.upload_id, content_length)
            self.events.append(event)
            return event

    def take(self) -> list[RequestEvent]:
        with self._lock:
            events, self.events = self.events, []
            return events


class ChaosMiddleware:
    """Outermost WSGI layer: observes each request, counts its body, lets the switch kill."""

    def __init__(self, app: Callable[..., Any], observer: Observer) -> None:
        self.app = app
        self.observer = observer

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = _raw_path(environ)
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        headers = {name[5:].replace("_", "-"): value for name, value in environ.items() if name.startswith("HTTP_")}
        request = classify(environ.get("REQUEST_METHOD", ""), path, environ.get("QUERY_STRING", ""), headers)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        event = self.observer.begin(request, length)
        switch = self.observer.switch
        if switch is not None and not switch.on_arrival(event):
            event.dropped = True
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        if "wsgi.input" in environ:
            environ["wsgi.input"] = CountingInput(environ["wsgi.input"], lambda n: self._read(event, n))

        def observed_start_response(status: str, *args: Any) -> Any:
            event.status = int(status.split(" ", 1)[0])
            if switch is not None:
                switch.on_response_start(event)
            return start_response(status, *args)

        def answered() -> None:
            event.answer()
            if switch is not None:
                switch.on_response_end(event)

        return ClosingIterator(self.app(environ, observed_start_response), [answered])

    def _read(self, event: RequestEvent, count: int) -> None:
        event.bytes_read += count
        switch = self.observer.switch
        if switch is not None:
            switch.on_body(event)


class ChaosMotoServer(MotoServer):
    """The tests' moto server (request log, strict S3 errors) with ChaosMiddleware in front."""

    def __init__(self, observer: Observer) -> None:
        super().__init__()
        self.observer = observer

    def start(self) -> ChaosMotoServer:
        super().start()
        server = self._moto.wsgi_server() if self._moto is not None else None
        if server is None or not hasattr(server, "app"):
            raise RuntimeError("moto's WSGI server changed: cannot observe requests")
        if not isinstance(server.app, ChaosMiddleware):
            server.app = ChaosMiddleware(server.app, self.observer)
        return self


class S3Endpoint(Protocol):
    """Where a daemon or a client reaches an S3 server, and with what credentials."""

    @property
    def endpoint_url(self) -> str: ...

    @property
    def access_key(self) -> str: ...

    @property
    def secret_key(self) -> str: ...


class ObservedServer(S3Endpoint, Protocol):
    """An S3 endpoint whose requests go through an Observer: ChaosMotoServer or ProxiedServer."""

    observer: Observer

    def client(self) -> Any: ...


class ObservingProxy(LoopbackProxy):
    """A loopback HTTP proxy giving a server that takes no WSGI middleware (`rclone serve s3`) the
    same observation and kill hooks: one upstream connection per request, the body relayed as it
    arrives, the answer read whole before it is passed on. A request cut mid-body is cut upstream
    too; a dropped one never reaches the server."""

    thread_name = "chaos-proxy"

    def __init__(self, upstream_url: str, observer: Observer) -> None:
        super().__init__(upstream_url)
        self.observer = observer

    def relay(self, handler: RelayHandler) -> None:
        path, _, query = handler.path.partition("?")
        request = classify(handler.command, path, query, dict(handler.headers.items()))
        event = self.observer.begin(request, int(handler.headers.get("Content-Length") or 0))
        switch = self.observer.switch
        if switch is not None and not switch.on_arrival(event):
            event.dropped = True
            handler.close_connection = True
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            if not self._forward(handler, upstream, event, switch):
                handler.close_connection = True
                return
            self._answer(handler, upstream.getresponse(), event, switch)
        except OSError:
            handler.close_connection = True
        finally:
            upstream.close()

    @staticmethod
    def _forward(handler: RelayHandler, upstream: http.client.HTTPConnection, event: RequestEvent,
                 switch: KillSwitch | None) -> bool:
        """Send the request on as its body arrives; False if the client went away mid-body."""
        put_request(handler, upstream)
        upstream.endheaders()
        remaining = event.content_length
        while remaining > 0:
            chunk = handler.rfile.read(min(64 * KiB, remaining))
            if not chunk:
                return False
            remaining -= len(chunk)
            event.bytes_read += len(chunk)
            if switch is not None:
                switch.on_body(event)
            upstream.send(chunk)
        return True

    @staticmethod
    def _answer(handler: RelayHandler, response: http.client.HTTPResponse, event: RequestEvent,
                switch: KillSwitch | None) -> None:
        body = response.read()
        event.status = response.status
        if switch is not None:
            switch.on_response_start(event)
        send_answer(handler, response.status, response.reason, response.getheaders(), body)
        event.answer()
        if switch is not None:
            switch.on_response_end(event)


class UpstreamServer(S3Endpoint, Protocol):
    """A server started and stopped by the campaign: chunkd's LocalS3Server or the tests' CephRGW."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...


class ProxiedServer:
    """A server that takes no WSGI middleware (`rclone serve s3`, Ceph RGW) behind an
    ObservingProxy; the daemon talks to the proxy, verification talks to the server directly."""

    def __init__(self, upstream: UpstreamServer, observer: Observer) -> None:
        self.observer = observer
        self._upstream = upstream
        self._proxy: ObservingProxy | None = None

    @property
    def endpoint_url(self) -> str:
        assert self._proxy is not None
        return self._proxy.endpoint_url

    @property
    def access_key(self) -> str:
        return self._upstream.access_key

    @property
    def secret_key(self) -> str:
        return self._upstream.secret_key

    def client(self) -> Any:
        return make_client(self._upstream.endpoint_url, self.access_key, self.secret_key)

    def __enter__(self) -> Self:
        self._upstream.start()
        self._proxy = ObservingProxy(self._upstream.endpoint_url, self.observer).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        self._upstream.stop()


def proxied_rclone(root: Path, observer: Observer) -> ProxiedServer:
    """`rclone serve s3` (chunkd's dev server) on a folder, observed through the proxy."""
    return ProxiedServer(LocalS3Server(root, buckets=()), observer)


def proxied_rgw(observer: Observer) -> ProxiedServer:
    """A fresh one-node Ceph RGW (tests/support/ceph_rgw.py), observed through the proxy: the
    strict server, and one that answers unlike S3 exactly where a kill leaves chunkd to find out
    what happened (ListParts on a completed upload is 404 NoSuchKey, Complete after an abort 500)."""
    return ProxiedServer(CephRGW(), observer)


# -- killing ---------------------------------------------------------------------------------


@dataclasses.dataclass
class KillRecord:
    run: int
    spec: KillSpec
    fired: bool = False
    detail: str = ""  # what was happening when it fired
    at: float = 0.0  # seconds after that run's daemon was started
    killed_at: float | None = None  # time.monotonic() when SIGKILL was sent


class KillSwitch:
    """Arms one KillSpec against one daemon run and fires SIGKILL when its moment comes.

    Server-side kills happen in the request's own thread and wait until the daemon is dead before
    the server goes on, so an `applied` request's answer can never reach the daemon.
    """

    def __init__(self, trial_dir: Path) -> None:
        self._lock = threading.RLock()
        self._trial_dir = trial_dir
        self._spec: KillSpec | None = None
        self._daemon: DaemonProcess | None = None
        self._record: KillRecord | None = None
        self._count = 0
        self._target: int | None = None
        self._started = 0.0
        self._timers: list[threading.Timer] = []
        self._sources: tuple[Path, ...] = ()
        self.fired = threading.Event()

    def arm(self, spec: KillSpec, daemon: DaemonProcess, record: KillRecord, sources: Sequence[Path]) -> None:
        with self._lock:
            self._spec, self._daemon, self._record = spec, daemon, record
            self._count, self._target, self._started = 0, None, time.monotonic()
            self._sources = tuple(sources)
            self.fired.clear()
        if spec.phase is Phase.RANDOM:
            self._later(spec.at, f"{spec.at:.2f} s after start")
        elif spec.phase is Phase.AFTER_UPLOAD_ACTION and spec.variant == "source_gone":
            threading.Thread(target=self._watch_sources, name="chaos-sources", daemon=True).start()

    def disarm(self) -> bool:
        """Stop watching; True if the kill fired."""
        with self._lock:
            self._spec = None
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            return self.fired.is_set()

    def fire(self, detail: str) -> None:
        with self._lock:
            if self._spec is None or self.fired.is_set() or self._daemon is None or self._record is None:
                return
            process = self._daemon.process
            if process is None or process.poll() is not None:
                return
            self._record.killed_at = time.monotonic()
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            self._record.fired, self._record.detail = True, detail
            self._record.at = round(time.monotonic() - self._started, 3)
            self.fired.set()

    # -- hooks called by ChaosMiddleware, from the server's request threads --------------------

    def on_arrival(self, event: RequestEvent) -> bool:
        """False: drop the request unanswered (the daemon was killed before it got through)."""
        spec = self._spec
        if spec is None or not _counted_on_arrival(spec, event) or not self._nth(event):
            return True
        if spec.phase is Phase.PART_UPLOAD:
            if event.content_length == 0:  # no body to be killed in the middle of
                self.fire(_what(event, "as it arrived"))
            return True
        if spec.variant == "dropped":
            self.fire(_what(event, "as it arrived (not applied)"))
            return False
        return True

    def on_body(self, event: RequestEvent) -> None:
        spec = self._spec
        if spec is None or spec.phase is not Phase.PART_UPLOAD or event.index != self._target:
            return
        if event.bytes_read >= max(1, int(event.content_length * spec.fraction)):
            self.fire(_what(event, f"after {event.bytes_read} of {event.content_length} body bytes"))

    def on_response_start(self, event: RequestEvent) -> None:
        spec = self._spec
        if spec is not None and spec.phase in (Phase.COMPLETE, Phase.MANIFEST) and event.index == self._target:
            self.fire(_what(event, f"applied (status {event.status}), before the answer"))

    def on_response_end(self, event: RequestEvent) -> None:
        spec = self._spec
        if spec is not None and event.status == 200 and _counted_on_answer(spec, event) and self._nth(event):
            self._later(spec.delay, _what(event, f"{spec.delay * 1000:.1f} ms after its 200"))

    # -- helpers ------------------------------------------------------------------------------

    def _nth(self, event: RequestEvent) -> bool:
        """Counts a matching event; True for the armed one (remembered as the target)."""
        with self._lock:
            if self._spec is None or self._target is not None:
                return False
            self._count += 1
            if self._count != self._spec.nth:
                return False
            self._target = event.index
            return True

    def _later(self, delay: float, detail: str) -> None:
        timer = threading.Timer(delay, self.fire, args=(detail,))
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def _watch_sources(self) -> None:
        present = {path for path in self._sources if path.exists()}
        while self._spec is not None and not self.fired.is_set():
            for path in list(present):
                if not path.exists():
                    self.fire(f"{path.relative_to(self._trial_dir)} left the drop folder")
                    return
            present |= {path for path in self._sources if path.exists()}  # the late file
            time.sleep(0.002)


def _counted_on_arrival(spec: KillSpec, event: RequestEvent) -> bool:
    return (
        (spec.phase is Phase.PART_UPLOAD and event.data)
        or (spec.phase is Phase.COMPLETE and event.operation == "CompleteMultipartUpload")
        or (spec.phase is Phase.MANIFEST and event.manifest)
    )


def _counted_on_answer(spec: KillSpec, event: RequestEvent) -> bool:
    return (spec.phase is Phase.AFTER_PART_ACK and event.data) or (
        spec.phase is Phase.AFTER_UPLOAD_ACTION and spec.variant == "after_manifest" and event.manifest
    )


def _what(event: RequestEvent, how: str) -> str:
    part = f" part {event.part_number}" if event.part_number else ""
    return f"{event.operation} {event.key}{part} {how}"


# -- the files -------------------------------------------------------------------------------


class Writers:
    """Drops the late file and appends to the growing one while the daemon runs (and is killed)."""

    def __init__(self, input_dir: Path, files: Sequence[FileSpec]) -> None:
        self._input_dir = input_dir
        self._files = files
        self._threads: list[threading.Thread] = []
        self.max_gap = 0.0  # longest pause between two appends, seconds
        self.error: BaseException | None = None

    def start(self) -> None:
        for spec in self._files:
            path = self._input_dir / spec.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            if spec.kind in ("small", "large"):
                path.write_bytes(file_bytes(spec))
            elif spec.kind == "late":
                self._spawn(self._late, spec, path)
            elif spec.kind == "growing":
                path.write_bytes(file_bytes(spec)[: spec.initial])
                self._spawn(self._grow, spec, path)

    def join(self, timeout: float = 60) -> None:
        for thread in self._threads:
            thread.join(timeout)

    @property
    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def _spawn(self, target: Callable[[FileSpec, Path], None], spec: FileSpec, path: Path) -> None:
        def guarded() -> None:
            try:
                target(spec, path)
            except BaseException as exc:  # noqa: BLE001 - reported as a trial problem
                self.error = exc

        thread = threading.Thread(target=guarded, name=f"chaos-{spec.kind}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _late(self, spec: FileSpec, path: Path) -> None:
        time.sleep(spec.pauses[0])
        path.write_bytes(file_bytes(spec))

    def _grow(self, spec: FileSpec, path: Path) -> None:
        data = file_bytes(spec)
        offset, last = spec.initial, time.monotonic()
        with open(path, "ab", buffering=0) as handle:
            for size, pause in zip(spec.chunks, spec.pauses, strict=True):
                time.sleep(pause)
                handle.write(data[offset : offset + size])
                offset += size
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now


# -- one trial -------------------------------------------------------------------------------


@dataclasses.dataclass
class TrialResult:
    index: int
    seed: int
    state: str
    after_upload: str
    kills: list[KillRecord]
    objects: int
    objects_verified: int = 0
    file_bytes: int = 0
    data_bytes_sent: int = 0  # UploadPart/PutObject body bytes the server read, manifests apart
    manifest_bytes_sent: int = 0
    acked_resent: int = 0  # data requests for a (key, part) the server had already acknowledged
    acked_resent_max_run: int = 0  # the most of those in one daemon run after a kill
    acked_resent_what: list[str] = dataclasses.field(default_factory=list)  # "run N: Operation key #part"
    answered_after_kill: int = 0  # data requests the server still completed after their daemon died
    orphan_uploads: int = 0
    orphan_keys: list[str] = dataclasses.field(default_factory=list)
    writer_max_gap: float = 0.0
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)
    folder: str | None = None  # kept when the trial failed

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def resent_bytes(self) -> int:
        return self.data_bytes_sent - self.file_bytes

    @property
    def fired(self) -> list[KillRecord]:
        return [kill for kill in self.kills if kill.fired]


class Trial:
    """Runs one TrialPlan: files, kills and restarts, a final run, then verification."""

    def __init__(self, index: int, plan: TrialPlan, server: ObservedServer, folder: Path,
                 redis_url: str | None) -> None:
        self.index = index
        self.plan = plan
        self.server = server
        self.folder = folder
        self.input_dir = folder / "input"
        self.done_dir = folder / "done"
        self.bucket = f"chaos-{index:04d}"
        self.state_url = redis_url if plan.state == "redis" else f"sqlite:///{folder / 'state.db'}"
        self.env = daemon_env(
            input_dir=self.input_dir, state_url=self.state_url, endpoint_url=server.endpoint_url,
            access_key=server.access_key, secret_key=server.secret_key,
            bucket=self.bucket, part_size=PART_SIZE, include="*.bin", idle_seconds=IDLE_SECONDS,
            after_upload=plan.after_upload, done_dir=self.done_dir, file_concurrency=FILE_CONCURRENCY,
            part_concurrency=PART_CONCURRENCY, log_level="DEBUG", shutdown_timeout=30,
        )
        self.result = TrialResult(index, plan.seed, plan.state, plan.after_upload, [], len(plan.files),
                                  file_bytes=sum(spec.size for spec in plan.files))
        self.switch = KillSwitch(folder)
        self.run_number = 0

    def run(self) -> TrialResult:
        started = self.started = time.monotonic()
        self.input_dir.mkdir(parents=True)
        self.server.client().create_bucket(Bucket=self.bucket)
        self.server.observer.take()  # the previous trial's verification and clean-up
        if self.plan.state == "redis":
            with contextlib.closing(redis.Redis.from_url(self.state_url)) as client:
                client.flushall()
        writers = Writers(self.input_dir, self.plan.files)
        self.server.observer.switch = self.switch
        try:
            writers.start()
            self._runs(writers)
        finally:
            self.switch.disarm()
            self.server.observer.switch = None
            writers.join()
        self.result.writer_max_gap = round(writers.max_gap, 3)
        if writers.error is not None:
            self.result.problems.append(f"writer failed: {writers.error!r}")
        events = self.server.observer.take()
        self._write_timeline(events)
        self._account(events)
        self._verify()
        if self.result.problems and writers.max_gap >= IDLE_SECONDS:
            self.result.problems.append(
                f"note: the growing file paused {writers.max_gap:.1f}s (machine overloaded?), at least "
                f"idle_seconds={IDLE_SECONDS}: chunkd may rightly have finalized it early"
            )
        self._clean_bucket()
        self.result.seconds = round(time.monotonic() - started, 1)
        return self.result

    # -- daemon runs --------------------------------------------------------------------------

    def _runs(self, writers: Writers) -> None:
        daemon: DaemonProcess | None = None
        for spec, pause in zip(self.plan.kills, self.plan.restart_pauses, strict=True):
            daemon = self._start_daemon()
            record = KillRecord(self.run_number, spec)
            self.result.kills.append(record)
            self.switch.arm(spec, daemon, record, [self.input_dir / f.relpath for f in self.plan.files])
            settled = self._wait(daemon, writers, until_killed=True)
            if not self.switch.disarm():
                if not settled:
                    return
                break  # missed: the work was done before the moment came; this run is the last
            daemon = None
            time.sleep(pause)
        if daemon is None:
            daemon = self._start_daemon()
            if not self._wait(daemon, writers, until_killed=False):
                return
        code = daemon.terminate(timeout=60)
        if code != 0:
            self.result.problems.append(f"run {self.run_number}: exit code {code} after SIGTERM")

    def _start_daemon(self) -> DaemonProcess:
        self.run_number += 1
        self.server.observer.run = self.run_number
        return DaemonProcess(self.env, self.folder / f"daemon-{self.run_number}.log").start()

    def _wait(self, daemon: DaemonProcess, writers: Writers, *, until_killed: bool) -> bool:
        """Until the switch fired (when `until_killed`) or everything is done; False on trouble."""
        deadline = time.monotonic() + RUN_TIMEOUT
        with contextlib.closing(_StoreReader(self.state_url)) as store:
            while time.monotonic() < deadline:
                if until_killed and self.switch.fired.wait(0.1):
                    return False
                if not until_killed:
                    time.sleep(0.1)
                if daemon.process is not None and daemon.process.poll() is not None:
                    if until_killed and self.switch.fired.wait(10):  # fire() sets it once the kill is reaped
                        return False
                    self.result.problems.append(
                        f"run {self.run_number}: daemon exited by itself with code {daemon.process.returncode}"
                    )
                    return False
                if writers.done and _watching(daemon) and self._finished(store):
                    return True
        daemon.stop()
        self.result.problems.append(f"run {self.run_number}: did not finish within {RUN_TIMEOUT:.0f}s")
        return False

    def _finished(self, store: _StoreReader) -> bool:
        """Every file COMPLETED at its final size and its after-upload action done."""
        for spec in self.plan.files:
            record = store.find(spec.relpath)
            if record is None or record.state is not StreamState.COMPLETED or record.size != spec.size:
                return False
            if self.plan.after_upload != "keep" and (self.input_dir / spec.relpath).exists():
                return False
        return True

    # -- accounting and verification -------------------------------------------------------------

    def _write_timeline(self, events: list[RequestEvent]) -> None:
        """Every request of the trial, for reading a failure; times in seconds from the start."""
        with open(self.folder / "requests.jsonl", "w") as out:
            for kill in self.result.kills:
                if kill.killed_at is not None:
                    at = round(kill.killed_at - self.started, 4)
                    out.write(json.dumps({"kill": kill.run, "at": at, "detail": kill.detail}) + "\n")
            out.writelines(json.dumps(event.to_dict(self.started)) + "\n" for event in events)

    def _account(self, events: list[RequestEvent]) -> None:
        result = self.result
        result.data_bytes_sent = sum(event.bytes_read for event in events if event.data)
        result.manifest_bytes_sent = sum(event.bytes_read for event in events if event.manifest)
        killed_at = {kill.run: kill.killed_at for kill in result.kills if kill.killed_at is not None}
        acknowledged: set[tuple[str, int]] = set()
        resent_by_run: Counter[int] = Counter()
        for event in events:
            if not event.data:
                continue
            slot = (event.key, event.part_number or 0)
            if slot in acknowledged:
                resent_by_run[event.run] += 1
                part = f" #{event.part_number}" if event.part_number else ""
                result.acked_resent_what.append(f"run {event.run}: {event.operation} {event.key}{part}")
            if event.acknowledged(killed_at.get(event.run)):
                acknowledged.add(slot)
            elif event.acknowledged(None):
                result.answered_after_kill += 1
        result.acked_resent = sum(resent_by_run.values())
        result.acked_resent_max_run = max(resent_by_run.values(), default=0)
        if result.acked_resent_max_run > IN_FLIGHT_BOUND:
            result.problems.append(
                f"{result.acked_resent_max_run} acknowledged parts sent again in one run "
                f"(more than the {IN_FLIGHT_BOUND} a daemon can have in flight)"
            )

    def _verify(self) -> None:
        client = self.server.client()
        problems = self.result.problems
        for spec in self.plan.files:
            found = verify_object(client, self.bucket, spec)
            found += self._verify_source(spec)
            problems.extend(found)
            if not found:
                self.result.objects_verified += 1
        problems.extend(verify_status(self.env, self.plan.files))
        expected = {spec.relpath for spec in self.plan.files}
        expected |= {relpath + MANIFEST_SUFFIX for relpath in expected}
        extra = sorted(set(_keys(client, self.bucket)) - expected)
        if extra:
            problems.append(f"unexpected objects in the bucket: {extra}")
        unfinished = _unfinished_uploads(client, self.bucket)
        self.result.orphan_uploads = len(unfinished)
        self.result.orphan_keys = sorted(str(upload.get("Key")) for upload in unfinished)

    def _verify_source(self, spec: FileSpec) -> list[str]:
        """The local file was kept, deleted or moved as configured, never damaged."""
        source, moved = self.input_dir / spec.relpath, self.done_dir / spec.relpath
        action = self.plan.after_upload
        problems = []
        if action != "keep" and source.exists():
            problems.append(f"{spec.relpath}: still in the drop folder (after_upload={action})")
        keeper = source if action == "keep" else moved if action == "move" else None
        if keeper is not None:
            if not keeper.exists():
                problems.append(f"{spec.relpath}: missing from {keeper.parent} (after_upload={action})")
            elif _sha256_file(keeper) != hashlib.sha256(file_bytes(spec)).hexdigest():
                problems.append(f"{spec.relpath}: local copy differs from what was written")
        if action == "delete" and moved.exists():
            problems.append(f"{spec.relpath}: moved although after_upload=delete")
        return problems

    def _clean_bucket(self) -> None:
        """Free moto's memory: a campaign would otherwise hold every trial's objects."""
        client = self.server.client()
        for upload in _unfinished_uploads(client, self.bucket):
            client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for key in _keys(client, self.bucket):
            client.delete_object(Bucket=self.bucket, Key=key)
        with contextlib.suppress(ClientError):  # rclone keeps unfinished uploads' temporary files
            client.delete_bucket(Bucket=self.bucket)


def _watching(daemon: DaemonProcess) -> bool:
    """Past start-up: a SIGTERM before chunkd has its handlers would end it like any program."""
    return daemon.logged('"event": "watching ')


class _StoreReader:
    """The trial's checkpoint store, read the way `chunkd status` reads it; trouble reads as None."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._store: Any = None

    def find(self, relpath: str) -> Any:
        try:
            if self._store is None:
                self._store = open_store(self._url)
            return self._store.find_by_relpath(relpath)
        except (ChunkdError, OSError):  # not created yet, or busy: ask again next poll
            self.close()
            return None

    def close(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None


def verify_object(client: Any, bucket: str, spec: FileSpec) -> list[str]:
    """The object's bytes equal the source's; its manifest describes exactly those bytes."""
    expected = hashlib.sha256(file_bytes(spec)).hexdigest()
    try:
        response = client.get_object(Bucket=bucket, Key=spec.relpath)
        body = response["Body"].read()
        manifest = json.loads(client.get_object(Bucket=bucket, Key=spec.relpath + MANIFEST_SUFFIX)["Body"].read())
    except (ClientError, ValueError) as exc:  # missing object or manifest, or no JSON
        return [f"{spec.relpath}: object or manifest unreadable: {exc}"]
    name = spec.relpath
    problems = []
    if len(body) != spec.size or hashlib.sha256(body).hexdigest() != expected:
        problems.append(f"{name}: object ({len(body)} bytes) differs from the source ({spec.size} bytes)")
    wanted = {"bucket": bucket, "key": name, "size": spec.size, "sha256": expected}
    for field, value in wanted.items():
        if manifest.get(field) != value:
            problems.append(f"{name}: manifest {field} is {manifest.get(field)!r}, expected {value!r}")
    problems += _etag_problems(name, manifest, response.get("ETag", ""), body)
    if (manifest.get("source") or {}).get("relpath") != name:
        problems.append(f"{name}: manifest source.relpath is {(manifest.get('source') or {}).get('relpath')!r}")
    problems.extend(f"{name}: {problem}" for problem in check_parts(manifest.get("parts") or [], body))
    return problems


def _etag_problems(name: str, manifest: dict[str, Any], object_etag: str, body: bytes) -> list[str]:
    """The object's ETag agrees with the manifest's as `chunkd verify` judges it: equal, or (rclone
    serve s3) the whole object's MD5 where the manifest holds what Complete answered."""
    try:
        parts = parse_manifest(json.dumps(manifest).encode()).parts
    except ChunkdError as exc:
        return [f"{name}: manifest unreadable: {exc}"]
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    check = check_etag(object_etag, str(manifest.get("etag", "")), parts, object_md5=md5)
    return [] if check.ok else [f"{name}: manifest etag {manifest.get('etag')} vs object ETag: {check.detail}"]


def check_parts(parts: list[dict[str, Any]], body: bytes) -> list[str]:
    """Parts numbered 1..N, each starting where the previous ended, covering the object exactly,
    each with the checksum the server verified (its SHA-256, or its MD5 where Content-MD5 was the
    check) of the object's bytes in its range."""
    problems, offset = [], 0
    for number, part in enumerate(parts, start=1):
        if part.get("number") != number or part.get("offset") != offset:
            problems.append(f"part {part.get('number')} at offset {part.get('offset')}: expected #{number} at {offset}")
        size = int(part.get("size") or 0)
        start = int(part.get("offset") or 0)
        for name in [name for name in ("sha256", "md5") if part.get(name)]:
            if part[name] != hashlib.new(name, body[start : start + size]).hexdigest():
                problems.append(f"part {part.get('number')}: {name} does not match the object's bytes")
        offset += size
    if offset != len(body):
        problems.append(f"parts cover {offset} bytes, the object has {len(body)}")
    return problems


def verify_status(env: dict[str, str], files: Sequence[FileSpec]) -> list[str]:
    """`chunkd status --json`: each file COMPLETED at its size and SHA-256, nothing else left over."""
    command = [sys.executable, "-m", "chunkd", "status", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return [f"chunkd status exited {done.returncode}: {done.stderr.strip()[-500:]}"]
    streams = json.loads(done.stdout)
    problems = []
    for spec in files:
        expected = hashlib.sha256(file_bytes(spec)).hexdigest()
        mine = [s for s in streams if s["relpath"] == spec.relpath]
        if not any(s["state"] == "COMPLETED" and s["size"] == spec.size and s.get("sha256") == expected for s in mine):
            seen = [(s["state"], s["size"], s.get("last_error")) for s in mine]
            problems.append(f"{spec.relpath}: no COMPLETED stream of {spec.size} bytes in chunkd status ({seen})")
    for stream in streams:
        if stream["state"] != "COMPLETED":
            problems.append(f"status: {stream['relpath']} is {stream['state']} ({stream.get('last_error')})")
    return problems


def _keys(client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def _unfinished_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    except ClientError:  # `rclone serve s3` answers NoSuchUpload when there are none
        return []


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the campaign ----------------------------------------------------------------------------


@dataclasses.dataclass
class CampaignResult:
    seed: int
    state: str
    server: str
    trials: list[TrialResult]
    seconds: float = 0.0

    @property
    def failures(self) -> list[TrialResult]:
        return [trial for trial in self.trials if not trial.ok]

    @property
    def ok(self) -> bool:
        return bool(self.trials) and not self.failures

    @property
    def kills(self) -> int:
        return sum(len(trial.fired) for trial in self.trials)

    @property
    def missed(self) -> int:
        return sum(len(trial.kills) - len(trial.fired) for trial in self.trials)

    def kills_by_phase(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for trial in self.trials:
            for kill in trial.fired:
                label = kill.spec.phase.value + (f"/{kill.spec.variant}" if kill.spec.variant else "")
                counts[label] += 1
        return dict(sorted(counts.items()))

    @property
    def objects(self) -> int:
        return sum(trial.objects for trial in self.trials)

    @property
    def objects_verified(self) -> int:
        return sum(trial.objects_verified for trial in self.trials)

    @property
    def file_bytes(self) -> int:
        return sum(trial.file_bytes for trial in self.trials)

    @property
    def data_bytes_sent(self) -> int:
        return sum(trial.data_bytes_sent for trial in self.trials)

    @property
    def resent_bytes(self) -> int:
        return self.data_bytes_sent - self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "state": self.state, "server": self.server, "seconds": self.seconds,
            "ok": self.ok, "trials": len(self.trials), "kills": self.kills, "missed_kills": self.missed,
            "kills_by_phase": self.kills_by_phase(), "objects": self.objects,
            "objects_verified": self.objects_verified, "file_bytes": self.file_bytes,
            "data_bytes_sent": self.data_bytes_sent, "resent_bytes": self.resent_bytes,
            "resent_percent": round(100 * self.resent_bytes / self.file_bytes, 2) if self.file_bytes else 0.0,
            "acked_parts_resent": sum(t.acked_resent for t in self.trials),
            "acked_parts_resent_max_per_run": max((t.acked_resent_max_run for t in self.trials), default=0),
            "in_flight_bound": IN_FLIGHT_BOUND,
            "answered_after_kill": sum(t.answered_after_kill for t in self.trials),
            "orphan_uploads": sum(t.orphan_uploads for t in self.trials),
            "failures": [{"index": t.index, "seed": t.seed, "state": t.state, "problems": t.problems,
                          "folder": t.folder} for t in self.failures],
            "trial_results": [_trial_dict(t) for t in self.trials],
        }

    def summary(self) -> str:
        data = self.to_dict()
        phases = ", ".join(f"{name} {count}" for name, count in data["kills_by_phase"].items()) or "none"
        lines = [
            (f"chaos: {len(self.trials)} trials (seed {self.seed}, state {self.state}, server {self.server}) "
             f"in {self.seconds:.0f} s"),
            f"  kills: {self.kills} SIGKILLs ({self.missed} planned kills missed: the work was already done)",
            f"  by phase: {phases}",
            f"  objects verified: {self.objects_verified}/{self.objects} (SHA-256 vs source, manifest, status)",
            (f"  bytes: files {_size(self.file_bytes)}, sent {_size(self.data_bytes_sent)}, re-sent beyond the "
             f"file sizes {_size(self.resent_bytes)} ({data['resent_percent']}%)"),
            (f"  acknowledged parts sent again: {data['acked_parts_resent']} "
             f"(max {data['acked_parts_resent_max_per_run']} in one run; bound {IN_FLIGHT_BOUND}); "
             f"{data['answered_after_kill']} more answered 200 only after their daemon was dead"),
            f"  multipart uploads left unfinished (for `chunkd gc`): {data['orphan_uploads']}",
        ]
        if not self.failures:
            lines.append("  failures: none")
        for trial in self.failures:
            lines.append(f"  FAILED trial {trial.index} (--replay {trial.seed} --state {trial.state}), "
                         f"folder {trial.folder}:")
            lines.extend(f"    - {problem}" for problem in trial.problems[:20])
        return "\n".join(lines)


def _trial_dict(trial: TrialResult) -> dict[str, Any]:
    data = dataclasses.asdict(trial)
    data["kills"] = [
        {"run": k.run, "phase": k.spec.phase.value, "plan": k.spec.describe(), "fired": k.fired,
         "detail": k.detail, "at": k.at}
        for k in trial.kills
    ]
    data["resent_bytes"] = trial.resent_bytes
    return data


def _size(count: int) -> str:
    return f"{count / MiB:,.1f} MiB"


def trial_seeds(seed: int, trials: int, *, first: int = 0) -> list[int]:
    """Random seeds whose first kills cycle through the phases (see plan_trial), from the phase
    at index `first`: a short campaign can cover the phases another one left out."""
    rng, count = random.Random(seed), len(Phase)
    return [(rng.getrandbits(32) // count) * count + (first + index) % count for index in range(trials)]


def run_campaign(
    trials: int,
    seed: int = 0,
    *,
    state: str = "sqlite",
    server: str = "moto",
    seeds: Sequence[int] | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CampaignResult:
    """Run `trials` trials (or one per entry of `seeds`); state 'mixed' alternates sqlite/redis."""
    if server not in SERVERS:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}, not {server!r}")
    if state not in ("sqlite", "redis", "mixed"):
        raise ValueError(f"state must be sqlite, redis or mixed, not {state!r}")
    seeds = list(seeds) if seeds is not None else trial_seeds(seed, trials)
    say = progress or (lambda line: None)
    root = Path(tempfile.mkdtemp(prefix="chunkd-chaos-", dir=workdir))
    result = CampaignResult(seed, state, server, [])
    started = time.monotonic()
    with _quiet_server_logs(), contextlib.ExitStack() as stack:
        observer = Observer()
        endpoint: ObservedServer
        if server == "moto":
            endpoint = stack.enter_context(ChaosMotoServer(observer))
        elif server == "rclone":
            endpoint = stack.enter_context(proxied_rclone(root / "s3", observer))
        else:
            endpoint = stack.enter_context(proxied_rgw(observer))
        needs_redis = state in ("redis", "mixed")
        redis_server = stack.enter_context(RedisServer()) if needs_redis else None
        for index, trial_seed in enumerate(seeds):
            trial_state = ("sqlite", "redis")[index % 2] if state == "mixed" else state
            plan = plan_trial(trial_seed, trial_state)
            folder = root / f"trial-{index:04d}"
            folder.mkdir()
            outcome = Trial(index, plan, endpoint, folder, redis_server.url if redis_server else None).run()
            if outcome.ok and not keep:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                outcome.folder = str(folder)
            result.trials.append(outcome)
            say(_trial_line(outcome))
    result.seconds = round(time.monotonic() - started, 1)
    if not any(trial.folder for trial in result.trials):
        shutil.rmtree(root, ignore_errors=True)
    return result


def _trial_line(trial: TrialResult) -> str:
    kills = ", ".join(
        (kill.spec.phase.value if kill.fired else f"({kill.spec.phase.value} missed)") for kill in trial.kills
    )
    verdict = "ok" if trial.ok else f"FAILED ({len(trial.problems)} problems)"
    return (f"trial {trial.index:3d} seed {trial.seed:10d} {trial.state:6s} {trial.after_upload:6s} "
            f"{trial.seconds:5.1f}s kills: {kills}; re-sent {_size(trial.resent_bytes)}; {verdict}")


@contextlib.contextmanager
def _quiet_server_logs() -> Iterator[None]:
    """The server writes a line per request and a traceback per connection a kill cuts."""
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None, help="campaign seed (default: random, printed)")
    parser.add_argument("--replay", type=int, action="append", metavar="TRIAL_SEED",
                        help="run the trial with this seed (as printed for a failure); repeatable")
    parser.add_argument("--state", choices=("sqlite", "redis", "mixed"), default="sqlite")
    parser.add_argument("--server", choices=SERVERS, default="moto",
                        help="moto in this process, or `rclone serve s3` or Ceph RGW behind an observing proxy")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    parser.add_argument("--keep", action="store_true", help="keep every trial's folder, not only failed ones")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    result = run_campaign(
        len(args.replay) if args.replay else args.trials, seed, state=args.state, server=args.server,
        seeds=args.replay, keep=args.keep, progress=lambda line: print(line, flush=True),
    )
    print(result.summary())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
