"""A real redis-server on a free local port that tests can stop, kill and start again (optionally
speaking only TLS, optionally with a password); a replica of another one; and a Sentinel group
(primary, replica, three sentinels; optionally all TLS-only) whose primary can be killed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import pytest
import redis

from tests.support.certs import ClientCertificate, ServerCertificate


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_redis_server() -> str:
    """Path of the binary; skips the test without one, except in CI where a skip would hide it."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if _in_ci():
            pytest.fail(f"{message}; CI must run the Redis tests", pytrace=False)
        pytest.skip(message)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process with no persistence; `start` after `stop`/`kill` reuses the port.

    With `tls` it listens on its port with TLS only (`--port 0 --tls-port`, no client certificates
    asked for), a replica replicates over TLS, and `url` is `rediss://…?ssl_ca_certs=<the CA>`; with
    `client_certificate` too, it refuses clients without a certificate from that CA
    (`--tls-auth-clients yes`), and `url` and `client()` show that one (`&ssl_certfile=…&ssl_keyfile=…`); with
    `password`, `--requirepass` (and `--masterauth`: a replica of a server wanting the same one);
    with `data_dir`, its snapshots go there (a small tmpfs, say) rather than into its own folder."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int | None = None,
        startup_timeout: float = 10.0,
        persistent: bool = False,
        replica_of: tuple[str, int] | None = None,
        tls: ServerCertificate | None = None,
        password: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        client_certificate: ClientCertificate | None = None,
    ) -> None:
        assert client_certificate is None or tls is not None, "a client certificate is only asked for over TLS"
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.persistent = persistent  # append-only file, fsynced on every write: survives stop/start
        self.replica_of = replica_of  # (host, port) it starts as `replicaof`: asynchronous replication
        self.tls = tls
        self.client_certificate = client_certificate
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="chunkd-redis-")
        self.data_dir = os.fspath(data_dir) if data_dir is not None else self.dir  # `--dir`: RDB and AOF files
        self._log_path = os.path.join(self.dir, "redis.log")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What a client connects with: scheme, password and (with TLS) the CA to trust."""
        if self.tls is None:
            return f"redis://{self._userinfo()}{self.host}:{self.port}/0"
        url = f"rediss://{self._userinfo()}{self.host}:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        if self.client_certificate is not None:
            url += f"&ssl_certfile={self.client_certificate.cert}&ssl_keyfile={self.client_certificate.key}"
        return url

    def client(self) -> redis.Redis:
        """A redis-py client on this server (over TLS when it speaks TLS); the caller closes it."""
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        args = [self.binary, "--bind", self.host, *self._listen_args()]
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.persistent:
            args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", self.data_dir]
        else:
            args += ["--save", "", "--appendonly", "no", "--dir", self.data_dir]
        args += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        if self.replica_of is not None:
            args += ["--replicaof", self.replica_of[0], str(self.replica_of[1])]
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_ready()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean shutdown, as a restarted service would see it."""
        if not self.running:
            return
        assert self._process is not None
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as on a crash or OOM kill."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server exited on start:\n{self._log_tail()}")
            if self._pong():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server not answering PING after {self.startup_timeout}s:\n{self._log_tail()}")

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-auth-clients", "no" if self.client_certificate is None else "yes",
            "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca), "--tls-replication", "yes",
        ]

    def _userinfo(self) -> str:
        return "" if self.password is None else f":{self.password}@"

    def _pong(self) -> bool:
        return _pong(self.host, self.port, tls_ca=None if self.tls is None else self.tls.ca,
                     tls_client=self.client_certificate)

    def _log_tail(self, lines: int = 20) -> str:
        with open(self._log_path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])


def find_redis_sentinel() -> list[str]:
    """How to start a sentinel: `redis-sentinel`, or `redis-server … --sentinel` (the same binary)."""
    binary = shutil.which("redis-sentinel")
    return [binary] if binary else [find_redis_server(), "--sentinel"]


class RedisSentinel:
    """One sentinel process watching `service` on `primary`, with its own (rewritable) config file.

    With `tls` it listens with TLS only (`port 0`, `tls-port`) and speaks TLS to the servers and the
    other sentinels (`tls-replication yes`); with `password`, it gives the servers that one."""

    host = "127.0.0.1"

    def __init__(self, primary: RedisServer | PrimaryRelay, *, service: str, quorum: int, down_after_ms: int,
                 failover_timeout_ms: int, startup_timeout: float = 10.0, tls: ServerCertificate | None = None,
                 password: str | None = None) -> None:
        self.command = find_redis_sentinel()
        self.port = free_port()
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="chunkd-sentinel-")
        self.startup_timeout = startup_timeout
        self.config = os.path.join(self.dir, "sentinel.conf")
        with open(self.config, "w") as config:
            config.write(
                f"{self._listen_config()}bind {self.host}\ndir {self.dir}\n"
                f"sentinel monitor {service} {primary.host} {primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {service} 1\n"
                + ("" if password is None else f"sentinel auth-pass {service} {password}\n")
            )
        self._log_path = os.path.join(self.dir, "sentinel.log")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.command[0], self.config, *self.command[1:]]
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while not _pong(self.host, self.port, tls_ca=None if self.tls is None else self.tls.ca):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"redis-sentinel did not start:\n{self.log_tail()}")
            time.sleep(0.02)

    def client(self) -> redis.Redis:
        """A redis-py client on this sentinel (over TLS when it speaks TLS); the caller closes it."""
        tls: dict[str, Any] = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return redis.Redis(self.host, self.port, decode_responses=True, socket_timeout=2, **tls)

    def _listen_config(self) -> str:
        if self.tls is None:
            return f"port {self.port}\n"
        return (
            f"port 0\ntls-port {self.port}\ntls-auth-clients no\ntls-replication yes\n"
            f"tls-cert-file {self.tls.cert}\ntls-key-file {self.tls.key}\ntls-ca-cert-file {self.tls.ca}\n"
        )

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with open(self._log_path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])


class PrimaryRelay:
    """A TCP relay in front of the primary: the address Sentinel, the replica and clients know it
    by. `hold` (not over TLS, where PSYNC is not seen) stops passing on what the primary sends down
    replication connections (those that asked for PSYNC): the writes it acknowledges from then on never reach the replica, as when a
    primary dies before asynchronous replication caught up. (Sentinel would point a replica that
    replicated through a side door straight back at the primary, so everyone uses the door.)"""

    host = "127.0.0.1"

    def __init__(self, primary: RedisServer) -> None:
        self.primary = primary
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        self._held = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="primary-relay", daemon=True).start()

    def hold(self) -> None:
        self._held.set()

    def close(self) -> None:
        self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection((self.primary.host, self.primary.port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            replication = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, replication), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, replication), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, replication: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if b"PSYNC" in data.upper():
                    replication.set()
                upstream.sendall(data)
        self._drop(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, replication: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if not (replication.is_set() and self._held.is_set()):
                    client.sendall(data)
        self._drop(client, upstream)

    @staticmethod
    def _drop(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class SentinelGroup:
    """A primary, one replica and three sentinels on loopback ports: what `redis+sentinel://` is
    made for. `kill_primary` is the crash Sentinel fails over from (a quorum of 2 of 3 agrees the
    primary is down after `down_after_ms`, one of them promotes the replica). The primary is known
    by its `relay`'s address, which a test may hold to make the replica fall behind.

    With `tls` every process speaks TLS only (servers, replication, sentinels) and `url` is
    `rediss+sentinel://…?sentinel_ssl=true&ssl_ca_certs=<the CA>`; `password` is the servers'."""

    service = "mymaster"

    def __init__(self, *, down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 tls: ServerCertificate | None = None, password: str | None = None) -> None:
        self.tls = tls
        self.password = password
        self.primary = RedisServer(tls=tls, password=password)
        self.relay = PrimaryRelay(self.primary)
        self.replica = RedisServer(replica_of=(self.relay.host, self.relay.port), tls=tls, password=password)
        self.sentinels = [
            RedisSentinel(self.relay, service=self.service, quorum=2, down_after_ms=down_after_ms,
                          failover_timeout_ms=failover_timeout_ms, tls=tls, password=password)
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        userinfo = "" if self.password is None else f":{self.password}@"
        if self.tls is None:
            return f"redis+sentinel://{userinfo}{hosts}/{self.service}/0"
        return f"rediss+sentinel://{userinfo}{hosts}/{self.service}/0?sentinel_ssl=true&ssl_ca_certs={self.tls.ca}"

    def start(self, timeout: float = 30.0) -> None:
        self.primary.start()
        self.replica.start()
        # In sync before the sentinels first ask it (then every 10 s): they see its link up at once.
        self._wait(self._replica_in_sync, timeout, "the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait(self._watching, timeout, "the sentinels to know each other and the replica")

    def kill_primary(self) -> None:
        """SIGKILL the primary; what the held relay kept from the replica is gone with it."""
        self.primary.kill()
        self.relay.close()

    def primary_port(self) -> int | None:
        """The primary port every sentinel names, or None while they disagree."""
        ports = {int(self._ask(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1]) for s in self.sentinels}
        return ports.pop() if len(ports) == 1 else None

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        self.replica.close()
        self.relay.close()
        self.primary.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _replica_in_sync(self) -> bool:
        client = self.replica.client()
        try:
            return bool(client.info("replication").get("master_link_status") == "up")
        finally:
            client.close()

    def _watching(self) -> bool:
        """Each sentinel sees the other two and the replica, in sync: a failover can be voted and done."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(self.service)
                replicas = client.sentinel_slaves(self.service)
            finally:
                client.close()
            if state["num-other-sentinels"] != 2 or len(replicas) != 1:
                return False
            if replicas[0].get("master-link-status") != "ok" or replicas[0]["is_sdown"]:
                return False
        return True

    def _ask(self, sentinel: RedisSentinel, *command: str) -> Any:
        client = sentinel.client()
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    @staticmethod
    def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.1)


def _pong(host: str, port: int, *, tls_ca: os.PathLike[str] | None = None,
          tls_client: ClientCertificate | None = None) -> bool:
    """The server answers a PING: PONG, or NOAUTH when it wants a password first."""
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=1.0))
            if tls_ca is not None:
                context = ssl.create_default_context(cafile=os.fspath(tls_ca))
                if tls_client is not None:
                    context.load_cert_chain(tls_client.cert, tls_client.key)
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname=host))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:  # ssl.SSLError is one
        return False
