"""The per-file state machine and the records the checkpoint store keeps."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkd.errors import InvalidTransition
from chunkd.model.states import (
    PartRecord,
    StreamRecord,
    StreamState,
    check_transition,
    new_stream_id,
)
from tests.support.sizes import MiB

S = StreamState

ALLOWED = {
    (S.PENDING, S.UPLOADING),
    (S.PENDING, S.FAILED),
    (S.UPLOADING, S.UPLOADING),
    (S.UPLOADING, S.FINALIZING),
    (S.UPLOADING, S.FAILED),
    (S.FINALIZING, S.UPLOADING),
    (S.FINALIZING, S.COMPLETED),
    (S.FINALIZING, S.FAILED),
    (S.FINALIZING, S.QUARANTINED),
    (S.FAILED, S.PENDING),
    (S.FAILED, S.UPLOADING),
}
ALL_PAIRS = [(a, b) for a in S for b in S]


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED), ids=lambda s: s.value)
def test_allowed_transitions(current: StreamState, new: StreamState) -> None:
    check_transition(current, new)  # raises InvalidTransition for a move the machine refuses
    rec = record(state=current)
    rec.move_to(new)
    assert rec.state is new


@pytest.mark.parametrize(
    ("current", "new"), [pair for pair in ALL_PAIRS if pair not in ALLOWED], ids=lambda s: s.value
)
def test_refused_transitions(current: StreamState, new: StreamState) -> None:
    with pytest.raises(InvalidTransition, match=f"{current.value} -> {new.value}"):
        check_transition(current, new)


def test_completed_is_final() -> None:
    for new in S:
        with pytest.raises(InvalidTransition):
            check_transition(S.COMPLETED, new)


def test_terminal_property() -> None:
    assert {state for state in S if state.terminal} == {S.COMPLETED, S.FAILED, S.QUARANTINED}


def test_invalid_transition_is_a_value_error() -> None:
    assert issubclass(InvalidTransition, ValueError)


# --- StreamRecord --------------------------------------------------------------------------------


def record(**overrides: object) -> StreamRecord:
    base: dict[str, object] = {
        "id": "0123456789abcdef",
        "relpath": "sub/a.mp4",
        "source_path": "/in/sub/a.mp4",
        "bucket": "videos",
        "key": "2024/sub/a.mp4",
        "schedule": {"base": 8 * MiB, "fixed": False},
    }
    base.update(overrides)
    return StreamRecord(**base)  # type: ignore[arg-type]


def test_move_to_changes_state_and_records_the_error() -> None:
    rec = record(updated_at=0.0)
    rec.move_to(S.UPLOADING)
    assert rec.state is S.UPLOADING
    assert rec.last_error is None
    assert rec.updated_at > 0.0

    rec.move_to(S.FAILED, error="AccessDenied")
    assert rec.state is S.FAILED  # type: ignore[comparison-overlap]  # mypy keeps the narrowing across move_to
    assert rec.last_error == "AccessDenied"

    rec.move_to(S.UPLOADING)  # a retry clears the old error
    assert rec.last_error is None


def test_move_to_refuses_an_illegal_move_and_leaves_the_record_alone() -> None:
    rec = record(state=S.COMPLETED, updated_at=5.0, last_error=None)
    with pytest.raises(InvalidTransition):
        rec.move_to(S.UPLOADING, error="x")
    assert rec.state is S.COMPLETED
    assert rec.updated_at == 5.0
    assert rec.last_error is None


def test_stream_record_roundtrip_through_json() -> None:
    rec = record(
        state=S.FINALIZING, device=64769, inode=123456, size=10_000_000, mtime=1_700_000_000.25,
        upload_id="upload-xyz", sha256="ab" * 32, last_error="SlowDown", discovered_at=1.5,
        first_byte_at=2.5, completed_at=None, updated_at=3.5,
    )
    data = json.loads(json.dumps(rec.to_dict()))
    assert data["state"] == "FINALIZING"
    assert StreamRecord.from_dict(data) == rec


def test_stream_record_from_dict_ignores_unknown_fields() -> None:
    data = record().to_dict()
    data["added_in_a_later_version"] = 1
    assert StreamRecord.from_dict(data) == record(discovered_at=data["discovered_at"], updated_at=data["updated_at"])


def test_stream_record_from_dict_rejects_an_unknown_state() -> None:
    data = record().to_dict()
    data["state"] = "EXPLODED"
    with pytest.raises(ValueError):
        StreamRecord.from_dict(data)


def test_new_stream_ids_are_short_hex_and_distinct() -> None:
    ids = {new_stream_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


# --- PartRecord ----------------------------------------------------------------------------------

parts = st.builds(
    PartRecord,
    number=st.integers(1, 10_000),
    offset=st.integers(0, 5 * 1024**4),
    size=st.integers(0, 5 * 1024**3),
    etag=st.text(max_size=40),
    sha256=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)


@given(parts)
def test_part_record_roundtrip_through_json(part: PartRecord) -> None:
    assert PartRecord.from_dict(json.loads(json.dumps(part.to_dict()))) == part


def test_part_record_from_dict_coerces_stored_strings() -> None:
    # Redis hashes hand everything back as strings.
    data = {"number": "2", "offset": "5242880", "size": "100", "etag": '"abc"', "sha256": "0" * 64}
    assert PartRecord.from_dict(data) == PartRecord(2, 5242880, 100, '"abc"', "0" * 64)
