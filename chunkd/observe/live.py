"""The events of `EventSink`, fanned out to the status page's Server-Sent Events clients.

Each client has its own bounded queue: `publish` (called on the upload path, by the job that
finished a file) only ever does a `put_nowait`, so a browser that stops reading never holds up an
upload; a client whose queue fills up is cut off instead, and its browser reconnects and reloads
the listing. The newest events are kept in a small ring, so a reconnecting client that sends
`Last-Event-ID` gets what it missed, when that is still there.
"""

from __future__ import annotations

import itertools
import json
import queue
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

# Never to a browser: `url` is a presigned GET of the object, a credential for whoever holds it.
PRIVATE_FIELDS = frozenset({"url"})


@dataclass(frozen=True)
class LiveEvent:
    id: str  # "<run>-<n>": unique across restarts, so an id from a previous run is not mistaken
    kind: str
    data: str  # the event document as JSON, without PRIVATE_FIELDS

    def frame(self) -> bytes:
        """The Server-Sent Events frame: the id a browser sends back as Last-Event-ID, the event
        name a page listens to, and the JSON on one line."""
        return f"id: {self.id}\nevent: {self.kind}\ndata: {self.data}\n\n".encode()


_CLOSED = object()  # queued by Subscription.close(): the reader stops


class Subscription:
    """One client's queue: events to send, then possibly the end."""

    def __init__(self, feed: EventFeed, size: int) -> None:
        self._feed = feed
        self._queue: queue.Queue[LiveEvent | object] = queue.Queue(maxsize=size)
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def offer(self, event: LiveEvent) -> None:
        """Queue without waiting; a full queue means a reader too slow to keep: close it."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.close()

    def get(self, timeout: float) -> LiveEvent | None:
        """The next event; None after `timeout` seconds without one (time for a heartbeat) and
        once closed (check `closed`)."""
        if self.closed:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return item if isinstance(item, LiveEvent) else None

    def close(self) -> None:
        """Stop the reader soon: wakes a `get` that is waiting."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._feed.unsubscribe(self)
        try:
            self._queue.put_nowait(_CLOSED)
        except queue.Full:
            pass  # a full queue is read at once, and `closed` is checked before waiting again


class EventFeed:
    """Fan-out of events to subscribers, with the newest `keep` events for late joiners."""

    def __init__(self, *, keep: int = 200, queue_size: int = 256) -> None:
        self._run = secrets.token_hex(4)
        self._numbers = itertools.count(1)
        self._recent: deque[LiveEvent] = deque(maxlen=keep)
        self._subscribers: set[Subscription] = set()
        self._queue_size = queue_size
        self._lock = threading.RLock()  # a subscription that overflows while joining unsubscribes under it

    def publish(self, event: dict[str, Any]) -> None:
        """Never blocks and never raises on a client's account."""
        public = {name: value for name, value in event.items() if name not in PRIVATE_FIELDS}
        data = json.dumps(public, separators=(",", ":"), default=str)
        with self._lock:
            live = LiveEvent(f"{self._run}-{next(self._numbers)}", str(event.get("event", "message")), data)
            self._recent.append(live)
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.offer(live)

    def subscribe(self, last_event_id: str | None = None) -> Subscription:
        """A new subscription, holding already the events after `last_event_id` when the ring
        still has that one (none otherwise: the page reloads the listing when it connects)."""
        subscription = Subscription(self, self._queue_size)
        with self._lock:
            for event in self._missed(last_event_id):
                subscription.offer(event)
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every subscription (daemon stop): their readers return at once."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.close()

    def _missed(self, last_event_id: str | None) -> list[LiveEvent]:
        if not last_event_id:
            return []
        recent = list(self._recent)
        for index, event in enumerate(recent):
            if event.id == last_event_id:
                return recent[index + 1:]
        return []
