"""What happened to a file, told to the event log in the state store and to webhooks.

`EventSink.emit` records the event first (commit first, side effects after), then hands it to
its listeners (the status page's live feed, which never blocks) and queues one webhook delivery
per URL for a background thread, so a slow or dead receiver never holds up an upload. A delivery
is a JSON POST, signed with HMAC-SHA256 when a secret is set, retried with exponential backoff
and jitter on connection errors, 5xx and 429.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)

from chunkd import __version__
from chunkd.errors import StoreError
from chunkd.model.states import StreamRecord
from chunkd.observe.logs import redact
from chunkd.store import EventLog

logger = logging.getLogger("chunkd.events")

EVENT_KINDS = frozenset({"completed", "failed", "quarantined"})


class _RetryableDelivery(Exception):
    """Worth another attempt: connection trouble, 5xx, 429."""


class _RejectedDelivery(Exception):
    """The receiver said no in a way another attempt cannot change (4xx other than 429)."""


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL split into what is sent where: userinfo becomes a Basic auth header."""

    url: str  # without userinfo
    display: str  # safe for logs
    authorization: str | None

    @classmethod
    def parse(cls, raw: str) -> WebhookTarget:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http:// or https://, got {redact(raw)!r}")
        netloc = parts.netloc.rpartition("@")[2]
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        display = redact(urlunsplit((parts.scheme, netloc, parts.path, "", "")))  # no query: it may hold a token
        return cls(url=url, display=display, authorization=authorization)


@dataclass(frozen=True)
class _Delivery:
    target: WebhookTarget
    kind: str
    body: bytes


_STOP = object()  # queued by close(): the worker ends after what was queued before it


def build_event(kind: str, record: StreamRecord, *, ts: float) -> dict[str, Any]:
    """The event document: what the log keeps and what a webhook receives."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(sorted(EVENT_KINDS))}")
    return {
        "event": kind,
        "ts": ts,
        "stream_id": record.id,
        "relpath": record.relpath,
        "node": record.node,
        "key": record.key,
        "bucket": record.bucket,
        "size": record.size,
        "sha256": record.sha256,
        "error": redact(record.last_error) if record.last_error else None,
        "state": record.state.value,
        "dedup_of": record.dedup_of,
        "thumbnail_key": record.thumbnail_key,
        "first_byte_at": record.first_byte_at,
        "completed_at": record.completed_at,
    }


def sign(body: bytes, secret: str) -> str:
    """`X-Chunkd-Signature` value: receivers recompute it over the raw body and compare."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class EventSink:
    """Records events in the store and delivers them to webhooks from one background thread.

    `emit` never blocks and never raises for a store or receiver problem (they are logged). Call
    `close(timeout)` on shutdown to let queued deliveries go out.
    """

    def __init__(
        self,
        store: EventLog,
        *,
        webhook_urls: Iterable[str] = (),
        secret: str | None = None,
        maxlen: int = 100_000,
        queue_size: int = 1000,
        attempts: int = 5,
        initial: float = 0.5,
        maximum: float = 30.0,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        presign: Callable[[StreamRecord], str] | None = None,
        listeners: Iterable[Callable[[dict[str, Any]], None]] = (),
    ) -> None:
        self.targets = [WebhookTarget.parse(url) for url in webhook_urls]
        self._store = store
        self._secret = secret
        self._maxlen = maxlen
        self._attempts = attempts
        self._wait = wait_random_exponential(multiplier=initial, max=maximum)
        self._timeout = timeout
        self._sleep = sleep
        self._clock = clock
        self._presign = presign  # completed events carry `url`, a presigned GET of the object
        self._listeners = list(listeners)  # called on the emitting thread: they must not block
        self._queue: queue.Queue[_Delivery | object] = queue.Queue(maxsize=queue_size)
        self._abandon = threading.Event()  # close() timed out: stop retrying, drop the rest
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.targets:
            self._thread = threading.Thread(target=self._work, name="chunkd-webhooks", daemon=True)
            self._thread.start()

    def emit(self, kind: str, record: StreamRecord) -> None:
        event = build_event(kind, record, ts=self._clock())
        if kind == "completed" and self._presign is not None:
            event["url"] = self._presigned(record)
        try:
            self._store.append_event(event, maxlen=self._maxlen)
        except StoreError as exc:
            logger.error("could not record %s event: %s", kind, exc, extra={"stream_id": record.id})
        for listener in self._listeners:
            listener(event)
        if self._closed:
            return
        body = json.dumps(event, separators=(",", ":")).encode()
        for target in self.targets:
            try:
                self._queue.put_nowait(_Delivery(target, kind, body))
            except queue.Full:
                logger.warning(
                    "webhook queue full; dropped %s event for %s", kind, target.display,
                    extra={"stream_id": record.id},
                )

    def _presigned(self, record: StreamRecord) -> str | None:
        """The object's presigned GET URL, or None when it could not be signed (the reason is logged;
        the URL never is: it is a credential)."""
        assert self._presign is not None
        try:
            return self._presign(record)
        except Exception as exc:  # noqa: BLE001 - an event without its URL beats no event
            logger.warning("could not presign a URL for %s: %s", record.key, type(exc).__name__)
            return None

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, waiting at most `timeout` seconds; then give up on the rest."""
        self._closed = True
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=max(0.0, timeout))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon.set()
            logger.warning("webhook deliveries still pending after %.0fs; dropped", timeout)
            self._thread.join(5.0)

    # -- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._abandon.is_set():
                if self._queue.empty():
                    return
                continue
            assert isinstance(item, _Delivery)
            self._deliver(item)

    def _deliver(self, delivery: _Delivery) -> None:
        delivery_id = str(uuid.uuid4())  # the same on every attempt, so a receiver can de-duplicate
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts) | stop_when_event_set(self._abandon),
            wait=self._wait,
            retry=retry_if_exception_type(_RetryableDelivery),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(self._post, delivery, delivery_id)
        except (_RetryableDelivery, _RejectedDelivery) as exc:
            logger.warning("webhook %s: %s event not delivered: %s", delivery.target.display, delivery.kind, exc)
        except Exception as exc:  # noqa: BLE001 - the worker must outlive any one delivery
            logger.error("webhook %s: unexpected error: %s", delivery.target.display, redact(str(exc)))

    def _post(self, delivery: _Delivery, delivery_id: str) -> None:
        request = urllib.request.Request(
            delivery.target.url, data=delivery.body, method="POST", headers=self._headers(delivery, delivery_id)
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            if status >= 500 or status == 429:
                raise _RetryableDelivery(f"HTTP {status}") from None
            raise _RejectedDelivery(f"HTTP {status}") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
            reason = getattr(exc, "reason", exc)
            raise _RetryableDelivery(f"connection failed: {redact(str(reason))}") from None

    def _headers(self, delivery: _Delivery, delivery_id: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"chunkd/{__version__}",
            "X-Chunkd-Event": delivery.kind,
            "X-Chunkd-Delivery": delivery_id,
        }
        if self._secret:
            headers["X-Chunkd-Signature"] = sign(delivery.body, self._secret)
        if delivery.target.authorization:
            headers["Authorization"] = delivery.target.authorization
        return headers
