"""What happens to the local file after its upload: kept, deleted or moved (CHUNKD_AFTER_UPLOAD)."""

from __future__ import annotations

import shutil
from pathlib import Path

from chunkd.errors import ChunkdError
from chunkd.intake.paths import free_name
from chunkd.model.states import StreamRecord, StreamState
from chunkd.pipeline.engine import Engine, StreamLog
from chunkd.pipeline.monitor import take_snapshot


def after_upload(engine: Engine, record: StreamRecord, path: Path, log: StreamLog) -> None:
    """keep | delete | move the local file of a COMPLETED, verified stream whose manifest is written.

    Runs again for a completed file found unchanged on a later start, so a crash between
    recording COMPLETED and acting only delays the action.
    """
    action = engine.settings.after_upload
    if action == "keep" or record.state is not StreamState.COMPLETED:
        return
    try:
        snap = take_snapshot(path)
    except ChunkdError:
        return
    recorded = (record.device, record.inode, record.size, record.mtime)
    if (snap.identity.device, snap.identity.inode, snap.size, snap.mtime) != recorded:
        log.warning("file changed after its upload; leaving it in place")
        return
    if action == "delete":
        path.unlink()
        log.info("deleted local file after verified upload")
        return
    target = free_name(engine.settings.done_path / record.relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), target)
    log.info("moved local file after verified upload", extra={"path": str(target)})
