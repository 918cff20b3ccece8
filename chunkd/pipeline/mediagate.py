"""The media check at finalize: is the file readable as video, and what if it is not.

ffprobe's verdict goes into the manifest's `media` block. An unreadable file is, by
CHUNKD_INVALID_MEDIA, quarantined (moved aside with a reason file, nothing uploaded), rejected
(`chunkd upload`: fail, but never move a file the user named) or uploaded anyway.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from chunkd.config import DEFAULT_INCLUDE
from chunkd.errors import PermanentError, ProbeIncomplete, Quarantined, RetryableError
from chunkd.intake.paths import free_name
from chunkd.model.states import StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.media import UNAVAILABLE_REASON, probe
from chunkd.pipeline.monitor import Snapshot
from chunkd.pipeline.thumbnail import PosterFrame

VIDEO_SUFFIXES = frozenset(pattern.removeprefix("*").lower() for pattern in DEFAULT_INCLUDE)


@dataclass(frozen=True)
class MediaVerdict:
    """What the manifest records about the media: ffprobe's summary, or why there is none; and
    the poster frame being made of a valid video (see `with_poster`)."""

    media: dict[str, Any] | None = None
    error: str | None = None
    poster: Future[PosterFrame] | None = None


def check_media(upload: UploadCoordinator, snap: Snapshot, *, sha256: Callable[[], str | None]) -> MediaVerdict:
    """ffprobe's verdict, acted on. `sha256` gives the whole-file hash for a quarantine note."""
    if PurePosixPath(upload.record.relpath).suffix.lower() not in VIDEO_SUFFIXES:
        return MediaVerdict(error="not a video file name")
    try:
        info = probe(upload.path)
    except ProbeIncomplete as exc:
        raise RetryableError(f"could not check the media: {exc}", code="ProbeIncomplete") from None
    if info is None:
        return MediaVerdict(error=UNAVAILABLE_REASON)
    verdict = MediaVerdict(media=info.to_dict())
    if info.valid:
        return verdict
    reason = f"not readable as media: {info.reason}"
    policy = upload.engine.settings.invalid_media
    if policy == "quarantine":
        _quarantine(upload, reason, snap, verdict, sha256)
    if policy == "reject":  # `chunkd upload`: never move a file the user named
        upload.abort_upload()
        raise PermanentError(reason, code="InvalidMedia")
    upload.log.warning("uploading a file ffprobe cannot read (invalid_media=upload): %s", info.reason)
    return verdict


def with_poster(upload: UploadCoordinator, verdict: MediaVerdict) -> MediaVerdict:
    """`verdict`, with the poster frame of a valid video started in the engine's pool: it is made
    while finalize sends the last parts and completes, and publish uploads it."""
    return dataclasses.replace(verdict, poster=upload.engine.posters.start(upload.path, verdict.media))


def _quarantine(
    upload: UploadCoordinator, reason: str, snap: Snapshot, verdict: MediaVerdict, sha256: Callable[[], str | None]
) -> None:
    record, engine = upload.record, upload.engine
    upload.abort_upload()
    if record.sha256 is None:
        record.sha256 = sha256()  # before the move: it may be a read of the file where it is
    target = free_name(engine.settings.quarantine_path / record.relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(upload.path), target)
    note = {
        "relpath": record.relpath, "stream_id": record.id, "reason": reason, "size": snap.size,
        "sha256": record.sha256, "quarantined_at": engine.wall(), "media": verdict.media,
    }
    target.with_name(target.name + ".reason.json").write_text(json.dumps(note, indent=2) + "\n")
    record.move_to(StreamState.QUARANTINED, error=reason)
    upload.save()
    upload.log.error("quarantined: %s", reason, extra={"path": str(target)})
    raise Quarantined(reason)
