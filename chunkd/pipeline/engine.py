"""What every stream job shares: settings, store, uploader, the part pool and the stop flag."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkd.config import Settings
from chunkd.model.node import Scope
from chunkd.observe.metrics import Metrics
from chunkd.pipeline.thumbnail import PosterFrames
from chunkd.s3.listing import FolderListings
from chunkd.s3.traits import ServerTraits
from chunkd.s3.uploader import Uploader
from chunkd.store import CheckpointStore
from chunkd.store.health import StoreHealth
from chunkd.store.lease import LeaseKeeper


@dataclass(frozen=True)
class Pacing:
    """How often the loop looks at things; tests shorten these instead of patching constants."""

    cancel_check_seconds: float = 2.0
    growing_poll_seconds: float = 0.1
    growth_save_seconds: float = 1.0  # a growing file's new size is recorded at most this often
    prescan_min_idle_seconds: float = 2.0  # below this idle period a prescan would not pay off


@dataclass
class Engine:
    settings: Settings
    store: CheckpointStore
    uploader: Uploader
    input_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    hostname: str = field(default_factory=socket.gethostname)
    on_progress: Callable[[str, int], None] | None = None  # (relpath, bytes newly acknowledged)
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    wall: Callable[[], float] = time.time  # timestamps users see
    monotonic: Callable[[], float] = time.monotonic  # intervals
    pacing: Pacing = field(default_factory=Pacing)
    endpoint: str = ""  # the destination's name in records (S3Target.destination)
    confirm_skips: bool = False  # `chunkd upload`: an unchanged completed file is looked for in the bucket
    server_copy_refused: bool = False  # a CopyObject answered NotImplemented: dedup=copy sends bytes instead
    part_pool: ThreadPoolExecutor = field(init=False)
    leases: LeaseKeeper = field(init=False)
    store_health: StoreHealth = field(init=False)
    folders: FolderListings = field(init=False)
    posters: PosterFrames = field(init=False)
    # A file older than this without a record may be one the store forgot, and its manifest is looked
    # for (chunkd.pipeline.recovery): the run's start, moved on when the store loses its data.
    forgotten_before: float = field(init=False)

    def __post_init__(self) -> None:
        self.forgotten_before = self.started_at
        workers = self.settings.file_concurrency * self.settings.part_concurrency
        self.part_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunkd-part")
        self.leases = LeaseKeeper(self.store, self.settings.lease_seconds)
        self.store_health = StoreHealth()
        self.folders = FolderListings(self.uploader)
        self.posters = PosterFrames(enabled=self.settings.thumbnail)

    @property
    def node(self) -> str:
        return self.settings.node_name

    @property
    def scope(self) -> Scope:
        """The records this daemon's folder holds and the leases its jobs take (chunkd.model.node)."""
        return self.settings.scope

    def adopt_traits(self, traits: ServerTraits) -> None:
        """At start, before any job runs: the gateway from now on is the one for this server."""
        self.uploader = self.uploader.with_traits(traits)

    def may_be_forgotten(self, mtime: float) -> bool:
        """A file this old without a record may be one the store forgot: older than the run (or the
        store's loss of its data), or than CHUNKD_RETENTION_DAYS, past which its record may have
        expired (retention, `chunkd gc`) while the file stayed in the folder."""
        expired_before = self.wall() - self.settings.retention_days * 86400
        return mtime < self.forgotten_before or mtime < expired_before

    def store_lost_data(self) -> None:
        """The store came back empty: every file older than now may be one it forgot, and a bucket
        listing made before may miss manifests written since."""
        self.forgotten_before = self.wall()
        self.folders.forget()

    def progress(self, relpath: str, nbytes: int) -> None:
        if self.on_progress is not None:
            self.on_progress(relpath, nbytes)

    def shutdown(self) -> None:
        self.part_pool.shutdown(wait=True, cancel_futures=True)
        self.posters.shutdown()
        self.leases.close()


class StreamLog(logging.LoggerAdapter[logging.Logger]):
    """Every line about a file carries its stream id and relpath, in JSON and in text."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = {**(self.extra or {}), **kwargs.get("extra", {})}
        kwargs["extra"] = extra
        return msg, kwargs
