"""Every exception chunkd raises, grouped by what the caller should do about it.

Almost all derive from ChunkdError. Three deliberately do not: ProbeIncomplete and ScanCancelled
are signals between two pieces of our own code rather than failures to report, and
InvalidTransition is a bug, a ValueError that no handler of ours should swallow.
"""

from __future__ import annotations


class ChunkdError(Exception):
    """Base class for chunkd's own errors."""


# -- Fix the setup: the daemon or command cannot start as configured -------------------------------


class ConfigError(ChunkdError):
    """A setting is missing or malformed; names the setting so the user can fix it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class EndpointError(ChunkdError):
    """An endpoint is unreachable or refuses us; exit_code 2 when the fix is in the configuration."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CredentialsError(EndpointError):
    """boto3's chain found no usable credentials: no profile of that name, an expired SSO token,
    none at all. Exit 2: the fix is in the configuration (or an `aws sso login`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class DevServerError(ChunkdError):
    """The local S3 server could not be found, started or reached."""


# -- An S3 call failed: the subclass says whether to try again ------------------------------------


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


class CircuitOpenError(RetryableError):
    """The breaker kept this call off the network: the endpoint is down (or we are stopping)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="CircuitOpen")


class PermanentError(TransferError):
    """Trying again cannot help: bad credentials, missing bucket, access denied."""


class PartNotReplaceable(PermanentError):
    """The server holds other bytes for a part and will not take new ones (`rclone serve s3` once
    it streamed the part to disk answers NotImplemented): only a fresh upload can mend it."""


class UploadGoneError(TransferError):
    """The multipart upload no longer exists on the server (aborted or expired)."""


_DENIED_CODES = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoCredentials"})


def endpoint_error(exc: TransferError, *, bucket: str, where: str, what: str | None = None) -> EndpointError:
    """The one line an operator needs for an S3 failure at start-up (`what`: the object, if any)."""
    if exc.retryable:
        return EndpointError(f"cannot reach S3 endpoint {where} (CHUNKD_S3_ENDPOINT_URL): {exc}")
    if exc.code == "NoSuchBucket" or (what is None and exc.code == "404"):
        return EndpointError(f"bucket {bucket!r} does not exist at {where} (CHUNKD_BUCKET)", exit_code=2)
    if exc.code in _DENIED_CODES:
        return EndpointError(f"access to bucket {bucket!r} at {where} denied: {exc}", exit_code=2)
    return EndpointError(f"{what or f'bucket {bucket!r}'} at {where}: {exc}")


# -- The checkpoint store: wait for it, or let go of the file ------------------------------------


class StoreError(ChunkdError):
    """The checkpoint store could not be reached or refused a write."""


class StoreFullError(StoreError):
    """The store answers reads but cannot write: its disk is full (SQLite's "database or disk is
    full"; Redis's MISCONF after a failed snapshot), or Redis is at its `maxmemory` (OOM). `why`
    says which, for the log. Waited out like any outage; only a write that goes through ends it."""

    def __init__(self, message: str, *, why: str = "its disk is full") -> None:
        super().__init__(message)
        self.why = why


class LeaseLostError(ChunkdError):
    """Another daemon holds a newer lease on this file: stop touching its stream at once.

    Deliberately not a StoreError: the store answered, and waiting would not change the answer.
    """


class StoreResetError(LeaseLostError):
    """The store no longer knows this lease at all: it restarted empty or was flushed."""


# -- The local file: restart its upload, stop, or look again later -------------------------------


class SourceChangedError(ChunkdError):
    """The local file changed under us in a way that invalidates the upload so far."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyTakenError(ChunkdError):
    """Another file's object is (or is being uploaded) at this file's key, and overwriting is off:
    the file's stream failed with this message rather than replace that object."""


class SourceGoneError(ChunkdError):
    """The local file disappeared before its upload was finished."""


class Quarantined(ChunkdError):
    """The file is not readable as media and was moved aside; nothing was uploaded."""


# -- A stream job stops: on shutdown, or because an operator said so -------------------------------


class Interrupted(ChunkdError):
    """Shutdown reached a job: it stops where it is and resumes on the next start."""


class CancelledError(ChunkdError):
    """An operator cancelled the stream (`chunkd cancel`); the store refused to write over that.

    Not a StoreError either: the store answered, and its answer is final for this stream.
    """


class CancelTooLateError(CancelledError):
    """The cancel reached the store after the stream's object was committed (Complete or PutObject
    answered): nothing is left to stop, so the upload's record is written COMPLETED over it."""


class ProbeIncomplete(Exception):
    """ffprobe did not finish (timed out, or killed by a signal): says nothing about the file."""


class ScanCancelled(Exception):
    """The caller no longer needs the scan (shutdown, or an error while it ran alongside)."""


# -- A link's download: `retryable` says whether a later try can help -----------------------------


class DownloadError(ChunkdError):
    """A download failed. `retryable` says whether trying later can help; `http_status` is the
    server's answer when there was one, `retry_after` its Retry-After in seconds."""

    def __init__(
        self, reason: str, *, retryable: bool, http_status: int | None = None, retry_after: float | None = None,
        disk_full: bool = False, room_needed: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after = retry_after
        # The staging disk is full: the partial file is given up at once, and the URL waits for
        # `room_needed` free bytes (when known) before it is downloaded again.
        self.disk_full = disk_full
        self.room_needed = room_needed


# -- Bugs: nothing catches these on purpose --------------------------------------------------------------


class InvalidTransition(ValueError):
    """A state change the per-file state machine does not allow (chunkd.model.states)."""
