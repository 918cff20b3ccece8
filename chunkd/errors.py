"""One hierarchy for every error chunkd raises, split by what the caller should do about it."""

from __future__ import annotations


class ChunkdError(Exception):
    """Base class for chunkd's own errors."""


class ConfigError(ChunkdError):
    """A setting is missing or malformed; names the setting so the user can fix it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class StoreError(ChunkdError):
    """The checkpoint store could not be reached or refused a write."""


class TransferError(ChunkdError):
    """An S3 operation failed; carries the context a user needs to act on it."""

    retryable: bool = False

    def __init__(self, message: str, *, code: str = "", key: str = "", part: int | None = None) -> None:
        where = f" (key={key}" + (f", part={part}" if part is not None else "") + ")" if key else ""
        super().__init__(f"{message}{where}")
        self.code = code
        self.key = key
        self.part = part


class RetryableError(TransferError):
    """Worth trying again: connection drops, 5xx, throttling."""

    retryable = True


class PermanentError(TransferError):
    """Trying again cannot help: bad credentials, missing bucket, access denied."""


class UploadGoneError(TransferError):
    """The multipart upload no longer exists on the server (aborted or expired)."""


class SourceChangedError(ChunkdError):
    """The local file changed under us in a way that invalidates the upload so far."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceGoneError(ChunkdError):
    """The local file disappeared before its upload was finished."""
