"""Reading one byte range of a file: digests, the throttled body view, and identity checks."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.errors import SourceChangedError, SourceGoneError
from chunkd.pipeline import partreader
from chunkd.pipeline.partreader import Digest, FileIdentity, RangeReader, digest_range, open_checked

FILE_SIZE = 64 * 1024
DATA = random.Random(20240501).randbytes(FILE_SIZE)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("partreader") / "clip.mp4"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def handle(data_file: Path) -> Iterator[io.BufferedReader]:
    with open(data_file, "rb") as opened:
        yield opened


class CountingLimiter:
    """Stands in for TokenBucket: records what it was charged instead of sleeping."""

    def __init__(self) -> None:
        self.charged: list[int] = []

    def consume(self, n: int) -> None:
        self.charged.append(n)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int]:
    offset = draw(st.integers(0, FILE_SIZE))
    size = draw(st.integers(0, FILE_SIZE - offset))
    return offset, size


# --- digest_range --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(span=ranges(), read_size=st.sampled_from([1, 7, 4096, partreader.READ_SIZE]))
def test_digest_range_equals_hashlib(data_file: Path, span: tuple[int, int], read_size: int) -> None:
    offset, size = span
    expected = DATA[offset : offset + size]
    with open(data_file, "rb") as handle:
        digest = digest_range(handle, offset, size, md5=True, read_size=read_size)
        plain = digest_range(handle, offset, size, read_size=read_size)
    assert digest.md5_hex == hashlib.md5(expected).hexdigest()
    assert digest.sha256_hex == hashlib.sha256(expected).hexdigest()
    assert plain == Digest(digest.sha256_hex)


def test_digest_formats_for_headers_and_etags() -> None:
    md5 = hashlib.md5(b"abc")
    digest = Digest(sha256_hex=hashlib.sha256(b"abc").hexdigest(), md5_hex=md5.hexdigest())
    assert digest.md5_b64 == base64.b64encode(md5.digest()).decode("ascii")
    assert digest.etag == f'"{md5.hexdigest()}"'
    assert Digest(digest.sha256_hex).md5_b64 is None
    assert Digest(digest.sha256_hex).etag is None


def test_digest_range_past_the_end_means_the_file_shrank(handle: io.BufferedReader) -> None:
    with pytest.raises(SourceChangedError, match="shrank"):
        digest_range(handle, FILE_SIZE - 10, 20)


def test_digest_range_does_not_move_the_handle(handle: io.BufferedReader) -> None:
    handle.seek(123)
    digest_range(handle, 1000, 5000)
    assert handle.tell() == 123


# --- RangeReader ---------------------------------------------------------------------------------


def test_range_reader_reads_exactly_its_range(handle: io.BufferedReader) -> None:
    reader = RangeReader(handle, 1000, 300)
    assert len(reader) == 300
    assert reader.tell() == 0
    assert reader.read() == DATA[1000:1300]
    assert reader.tell() == 300
    assert reader.read() == b""
    assert reader.read(10) == b""


def test_range_reader_partial_reads_never_cross_the_end(handle: io.BufferedReader) -> None:
    reader = RangeReader(handle, 1000, 300)
    assert reader.read(100) == DATA[1000:1100]
    assert reader.read(0) == b""
    assert reader.read(150) == DATA[1100:1250]
    assert reader.read(10_000) == DATA[1250:1300]  # asked for more: gets only what is left in range
    assert reader.read(None) == b""  # type: ignore[arg-type]


def test_range_reader_at_end_of_file(handle: io.BufferedReader) -> None:
    reader = RangeReader(handle, FILE_SIZE - 50, 50)
    assert reader.read() == DATA[-50:]


def test_range_reader_seek_and_tell(handle: io.BufferedReader) -> None:
    reader = RangeReader(handle, 2000, 100)
    assert reader.seekable() and reader.readable()
    assert reader.seek(40) == 40
    assert reader.read(10) == DATA[2040:2050]
    assert reader.seek(-20, io.SEEK_CUR) == 30
    assert reader.tell() == 30
    assert reader.seek(-5, io.SEEK_END) == 95
    assert reader.read() == DATA[2095:2100]
    assert reader.seek(0) == 0  # a retried request rewinds the body
    assert reader.read() == DATA[2000:2100]


def test_range_reader_seek_is_clamped_to_the_range(handle: io.BufferedReader) -> None:
    reader = RangeReader(handle, 2000, 100)
    assert reader.seek(500) == 100
    assert reader.read() == b""
    assert reader.seek(-500, io.SEEK_CUR) == 0
    assert reader.seek(10, io.SEEK_END) == 100


def test_range_reader_readinto_and_readall(handle: io.BufferedReader) -> None:
    reader = RangeReader(handle, 10, 20)
    buffer = bytearray(8)
    assert reader.readinto(buffer) == 8
    assert bytes(buffer) == DATA[10:18]
    assert reader.readall() == DATA[18:30]
    assert reader.readinto(bytearray(8)) == 0


def test_range_reader_does_not_move_the_shared_handle(handle: io.BufferedReader) -> None:
    handle.seek(7)
    RangeReader(handle, 100, 50).read()
    assert handle.tell() == 7


@settings(max_examples=60, deadline=None)
@given(span=ranges(), reads=st.lists(st.integers(-1, 5000), min_size=1, max_size=20))
def test_range_reader_reads_concatenate_to_the_range(data_file: Path, span: tuple[int, int], reads: list[int]) -> None:
    offset, size = span
    with open(data_file, "rb") as handle:
        reader = RangeReader(handle, offset, size)
        chunks = [reader.read(n) for n in reads]
        rest = reader.read()
    got = b"".join(chunks) + rest
    assert got == DATA[offset : offset + size]
    assert all(len(chunk) <= n for chunk, n in zip(chunks, reads, strict=True) if n >= 0)


def test_limiter_is_charged_for_the_bytes_read(handle: io.BufferedReader) -> None:
    limiter = CountingLimiter()
    reader = RangeReader(handle, 0, 1000, limiter)  # type: ignore[arg-type]
    reader.read(300)
    reader.read(10_000)  # clamped to the 700 left in the range
    reader.read()
    assert limiter.charged == [300, 700]
    assert sum(limiter.charged) == len(reader)


def test_limiter_charges_again_after_rewind(handle: io.BufferedReader) -> None:
    limiter = CountingLimiter()
    reader = RangeReader(handle, 0, 100, limiter)  # type: ignore[arg-type]
    reader.read()
    reader.seek(0)
    reader.read()
    assert sum(limiter.charged) == 200  # the bytes really are sent twice


# --- open_checked --------------------------------------------------------------------------------


def test_open_checked_without_identity_opens(data_file: Path) -> None:
    with open_checked(data_file, None) as opened:
        assert opened.read(4) == DATA[:4]


def test_open_checked_with_matching_identity_opens(data_file: Path) -> None:
    identity = FileIdentity.of(os.stat(data_file))
    with open_checked(data_file, identity) as opened:
        assert opened.read(4) == DATA[:4]


def test_open_checked_refuses_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"old")
    old_identity = FileIdentity.of(os.stat(path))
    newer = tmp_path / "new.mp4"
    newer.write_bytes(b"new")  # exists alongside the old inode, so it cannot reuse its number
    os.replace(newer, path)

    with pytest.raises(SourceChangedError, match="inode"):
        open_checked(path, old_identity)


def test_open_checked_missing_file_is_source_gone(tmp_path: Path) -> None:
    with pytest.raises(SourceGoneError, match="gone.mp4"):
        open_checked(tmp_path / "gone.mp4", None)


# --- read_into and BufferReader ------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(span=ranges())
def test_read_into_holds_exactly_the_range(data_file: Path, span: tuple[int, int]) -> None:
    offset, size = span
    buffer = bytearray(size)
    with open(data_file, "rb") as handle:
        partreader.read_into(handle, offset, buffer)
    assert bytes(buffer) == DATA[offset : offset + size]
    assert partreader.digest_of(buffer, md5=True) == Digest(
        hashlib.sha256(buffer).hexdigest(), hashlib.md5(buffer).hexdigest()
    )


def test_read_into_past_the_end_means_the_file_shrank(handle: io.BufferedReader) -> None:
    with pytest.raises(SourceChangedError, match="shrank"):
        partreader.read_into(handle, FILE_SIZE - 10, bytearray(20))


def test_buffer_reader_charges_the_limiter_block_by_block_and_again_after_rewind() -> None:
    limiter = CountingLimiter()
    reader = partreader.BufferReader(DATA[:1000], limiter, payload_sha256="known")  # type: ignore[arg-type]
    assert (len(reader), reader.payload_sha256) == (1000, "known")
    assert reader.read(300) + reader.read(10_000) + reader.read() == DATA[:1000]
    assert limiter.charged == [300, 700]
    assert reader.seek(-100, io.SEEK_END) == 900
    assert reader.read() == DATA[900:1000]
    assert sum(limiter.charged) == 1100
