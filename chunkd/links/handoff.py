"""A staged download handed to the scheduler like a dropped file (its priority, size classes and
`file_concurrency` apply), and how that upload ended recorded on the URL's record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from chunkd.errors import StoreError
from chunkd.intake.scheduler import JobResult
from chunkd.model.states import StreamRecord, StreamState, UrlRecord, UrlState
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome

logger = logging.getLogger("chunkd.links")


class SubmitUpload(Protocol):
    """The scheduler's `submit`: True if it took the file, and then `on_done` hears the result."""

    def __call__(
        self, path: Path, relpath: str, *, final: bool, origin: dict[str, Any] | None,
        on_done: Callable[[JobResult], None],
    ) -> bool: ...


class UploadHandoff:
    """Sends staged files to the scheduler and records each upload's end; `on_settled(url)` is
    called (on the scheduler's worker) once that URL's upload has ended, however it ended."""

    def __init__(self, engine: Engine, submit_upload: SubmitUpload, *, on_settled: Callable[[str], None]) -> None:
        self._engine = engine
        self._submit_upload = submit_upload
        self._on_settled = on_settled

    def send(self, record: UrlRecord, staged: Path) -> bool:
        """Hand the staged file to the scheduler; True if it took it. UPLOADING is saved first: a
        stop before the upload ran leaves it so, and `resume` sends it again on the next start."""
        store = self._engine.store
        record.move_to(UrlState.UPLOADING)
        store.save_url(record)
        taken = self._submit_upload(
            staged, record.relpath, final=True, origin=dict(record.info),
            on_done=lambda result: self._uploaded(record, staged, result),
        )
        if not taken:  # stopping, or that relpath is in the scheduler already: sent on the next pass
            record.move_to(UrlState.DOWNLOADED)
            store.save_url(record)
        return taken

    def _uploaded(self, record: UrlRecord, staged: Path, result: JobResult) -> None:
        """The scheduler is done with the upload (called on its worker): record how it ended."""
        try:
            self._record_upload(record, staged, result)
        except StoreError as exc:
            logger.error("state store unavailable while handling a download: %s", exc)
        finally:
            self._on_settled(record.url)

    def _record_upload(self, record: UrlRecord, staged: Path, result: JobResult) -> None:
        store, outcome = self._engine.store, result.outcome
        if outcome is Outcome.COMPLETED:
            record.key = result.key
            record.move_to(UrlState.COMPLETED)
            staged.unlink(missing_ok=True)  # the staged download was the only copy; the object is verified
            record.staged_path = None
        elif outcome in (Outcome.FAILED, Outcome.QUARANTINED):
            stream = store.find_by_relpath(record.relpath, scope=self._engine.scope)
            error = (stream.last_error if stream else None) or result.error or outcome.value
            record.move_to(UrlState.FAILED, error=error)
        elif outcome is Outcome.SKIPPED and (stream := store.find_by_relpath(record.relpath, scope=self._engine.scope)) and stream.state.terminal:
            # Nothing new to upload: its stream already ended (a failure stays one until `chunkd
            # retry`); say so instead of sending the same file again and again.
            _settle_from_stream(record, stream, staged)
        else:
            record.move_to(UrlState.DOWNLOADED)  # interrupted or set aside: uploaded on the next pass
        store.save_url(record)


def _settle_from_stream(record: UrlRecord, stream: StreamRecord, staged: Path) -> None:
    if stream.state is StreamState.COMPLETED:
        record.key = stream.key
        record.move_to(UrlState.COMPLETED)
        staged.unlink(missing_ok=True)
        record.staged_path = None
    else:
        record.move_to(UrlState.FAILED, error=stream.last_error or stream.state.value)
