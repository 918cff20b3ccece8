"""What operators watch, from a real `chunkd run` process: systemd notifications, the HTTP
endpoint's probes and metrics against a real (and really stopped) S3 server: moto, and Ceph RGW."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from chunkd.s3.devserver import LocalS3Server, free_port
from tests.support.bucket import read_manifest
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import write_random
from tests.support.pause import PausableServer, frozen, start_endpoint, stop_endpoint
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB


@pytest.fixture
def start_daemon(chunkd_daemon: Callable[..., DaemonProcess], request: pytest.FixtureRequest) -> Callable[..., DaemonProcess]:
    """Starts daemons on the test's `pausable` server (moto, then RGW) if it takes one, else on moto."""
    s3 = request.getfixturevalue("pausable" if "pausable" in request.fixturenames else "moto")
    return lambda extra_env=None, **settings: chunkd_daemon(s3, extra_env=extra_env, **settings)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_systemd_ready_and_watchdog_notifications(start_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        daemon = start_daemon({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        messages = [sock.recv(4096).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1")
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        assert daemon.terminate() == 0
        after = [sock.recv(4096).decode()]
        while after[-1] == "WATCHDOG=1":  # a keep-alive may land between the reads and the SIGTERM
            after.append(sock.recv(4096).decode())
        assert after[-1] == "STOPPING=1"


def test_metrics_count_what_was_uploaded_and_readyz_follows_s3(
    start_daemon: Callable[..., DaemonProcess], pausable: PausableServer, input_dir: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    start_daemon(http_addr=f"127.0.0.1:{port}", http_token="s3cret-token", part_size="5MiB")
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, timeout=30, what="/readyz 200")
    write_random(input_dir / "one.mp4", 12 * MiB)  # 3 parts: 5 + 5 + 2 MiB
    write_random(input_dir / "two.mp4", 1000)  # one PutObject
    client = pausable.client()
    for name in ("one.mp4", "two.mp4"):
        wait_for(partial(read_manifest, client, name), timeout=60, what=f"manifest of {name}")
    assert get(f"{base}/metrics")[0] == 401  # the token guards metrics and status

    def both_counted() -> str | None:
        """The metrics once both files are counted: a file is, once its job has ended, a moment
        after its manifest is written."""
        status, body = get(f"{base}/metrics", token="s3cret-token")
        assert status == 200
        text = body.decode()
        return text if 'chunkd_files_total{outcome="completed"} 2.0' in text else None

    text = wait_for(both_counted, timeout=30, what="both files counted as completed")
    assert metric(text, "chunkd_uploaded_bytes_total") == 12 * MiB + 1000
    assert metric(text, "chunkd_uploaded_parts_total") == 3
    assert 'chunkd_streams{state="completed"} 2.0' in text
    status, body = get(f"{base}/status", token="s3cret-token")
    assert status == 200 and {row["relpath"] for row in json.loads(body)} == {"one.mp4", "two.mp4"}
    assert get(f"{base}/healthz")[0] == 200

    stop_endpoint(pausable)
    try:
        wait_for(lambda: get(f"{base}/readyz")[0] == 503, timeout=30, what="/readyz 503 while S3 is down")
        status, body = get(f"{base}/readyz")
        assert json.loads(body)["s3"] is False
        assert get(f"{base}/healthz")[0] == 200  # alive, just not ready
    finally:
        start_endpoint(pausable)
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, timeout=30, what="/readyz 200 again")


def test_readyz_answers_at_once_while_s3_hangs(
    chunkd_daemon: Callable[..., DaemonProcess], rclone_s3: LocalS3Server
) -> None:
    """A frozen server (rclone, SIGSTOPped) answers nothing: /readyz still answers within a second,
    and says not ready within 10 s; then ready again once the server runs on."""
    port = free_port()
    chunkd_daemon(rclone_s3, http_addr=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, timeout=30, what="/readyz 200")
    assert rclone_s3.pid is not None

    def timed_readyz() -> int:
        started = time.monotonic()
        status = get(f"{base}/readyz")[0]
        assert time.monotonic() - started < 1.0, "/readyz took more than a second"
        return status

    with frozen(rclone_s3.pid):
        frozen_at = time.monotonic()
        wait_for(lambda: timed_readyz() == 503, timeout=10, interval=0.2, what="/readyz 503 while S3 hangs")
        assert time.monotonic() - frozen_at < 10
        body = json.loads(get(f"{base}/readyz")[1])
        assert body["s3"] is False and body["store"] is True
        assert timed_readyz() == 503 and get(f"{base}/healthz")[0] == 200
    wait_for(lambda: timed_readyz() == 200, timeout=30, what="/readyz 200 again")


def test_webhook_gets_a_signed_post_per_completed_file(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    import hashlib
    import hmac
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        start_daemon(webhook_urls=url, webhook_secret="hook-secret")
        for name in ("a.mp4", "b.mp4"):
            write_random(input_dir / name, 2000)
        wait_for(lambda: len(received) >= 2, timeout=60, what="two webhook deliveries")
    finally:
        server.shutdown()
        server.server_close()
    events = {}
    for headers, body in received:
        expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        assert headers["X-Chunkd-Signature"] == expected
        assert headers["X-Chunkd-Event"] == "completed"
        event = json.loads(body)
        events[event["relpath"]] = event
    assert set(events) == {"a.mp4", "b.mp4"}
    assert all(event["size"] == 2000 and event["key"] == event["relpath"] for event in events.values())
    assert len(received) == 2
