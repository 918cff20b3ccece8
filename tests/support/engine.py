"""The upload engine in-process, as the daemon builds it, with its S3 requests counted."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from chunkd.config import load_settings
from chunkd.daemon import build_engine
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome, StreamJob
from chunkd.s3.client import S3Target


def make_test_engine(server: Any, tmp_path: Path, **settings: Any) -> Engine:
    """An engine on tmp_path/input and SQLite in tmp_path; `engine.requests` counts S3 operations."""
    values = {"input_dir": str(tmp_path / "input"), "state_url": f"sqlite:///{tmp_path / 'state.db'}",
              "part_size": "5MiB", "idle_seconds": 1, "poll_seconds": 0.05, "invalid_media": "upload",
              **settings}
    target = S3Target(server.endpoint_url, None, server.access_key, server.secret_key)
    engine = build_engine(load_settings(env={}, overrides=values), target)
    engine.requests = Counter()  # type: ignore[attr-defined]
    engine.uploader._on_request = lambda op: engine.requests.update([op])  # type: ignore[attr-defined]
    return engine


def close_test_engine(engine: Engine) -> None:
    engine.stop.set()
    engine.shutdown()
    engine.store.close()


def run_job(engine: Engine, name: str, *, final: bool = True) -> Outcome:
    return StreamJob(engine, engine.input_dir / name, name, final=final).run()


def run_in_thread(engine: Engine, name: str) -> tuple[threading.Thread, list[Outcome]]:
    """A job on a file still being written (not final); its outcome lands in the list."""
    outcome: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(engine, name, final=False)))
    thread.start()
    return thread, outcome


def recorded_parts(engine: Engine, name: str) -> list[int]:
    """Part numbers checkpointed for the file's current stream."""
    record = engine.store.find_by_relpath(name)
    return [] if record is None else [p.number for p in engine.store.list_parts(record.id)]
