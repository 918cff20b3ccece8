"""Part planning against S3's limits, for every base size a user may configure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.model.planner import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    GiB,
    MiB,
    PartSchedule,
    TiB,
    plan_schedule,
)

bases = st.one_of(
    st.integers(MIN_PART_SIZE, MAX_PART_SIZE),
    st.sampled_from([MIN_PART_SIZE, 8 * MiB, 16 * MiB, 524 * MiB, 525 * MiB, MAX_PART_SIZE]),
)
part_numbers = st.integers(1, MAX_PARTS)
schedules = st.builds(plan_schedule, bases, fixed=st.booleans())


@st.composite
def schedule_and_size(draw: st.DrawFn) -> tuple[PartSchedule, int]:
    schedule = draw(schedules)
    size = draw(
        st.one_of(
            st.integers(0, 3 * schedule.base),  # the common case: a few parts
            st.integers(0, schedule.capacity),
            st.sampled_from([0, 1, schedule.base - 1, schedule.base, schedule.base + 1, schedule.capacity]),
        )
    )
    return schedule, size


@given(bases, st.booleans())
def test_capacity_holds_5_tib_unless_fixed(base: int, fixed: bool) -> None:
    schedule = plan_schedule(base, fixed=fixed)
    if fixed:
        assert schedule.fixed
        assert schedule.capacity == base * MAX_PARTS
    else:
        assert schedule.capacity >= MAX_OBJECT_SIZE


@given(bases)
def test_growing_group_is_the_largest_that_still_fits(base: int) -> None:
    schedule = plan_schedule(base)
    if schedule.group < MAX_PARTS:
        assert PartSchedule(base, schedule.group + 1).capacity < MAX_OBJECT_SIZE


@given(schedules, part_numbers)
def test_every_planned_part_is_within_s3_limits(schedule: PartSchedule, number: int) -> None:
    assert MIN_PART_SIZE <= schedule.part_size(number) <= MAX_PART_SIZE


@settings(max_examples=30)
@given(schedules)
def test_part_sizes_never_shrink_and_stay_under_5_gib(schedule: PartSchedule) -> None:
    sizes = [schedule.part_size(number) for number in range(1, MAX_PARTS + 1)]
    assert sizes == sorted(sizes)
    assert sizes[0] == schedule.base
    assert max(sizes) <= MAX_PART_SIZE


@given(schedules, st.integers(1, MAX_PARTS - 1))
def test_offsets_follow_sizes(schedule: PartSchedule, number: int) -> None:
    assert schedule.part_offset(number + 1) == schedule.part_offset(number) + schedule.part_size(number)
    assert schedule.part(number).end == schedule.part_offset(number + 1)


@settings(max_examples=60)
@given(schedule_and_size())
def test_parts_cover_the_file_exactly(case: tuple[PartSchedule, int]) -> None:
    schedule, size = case
    parts = list(schedule.parts_for(size))
    assert len(parts) <= MAX_PARTS
    assert [part.number for part in parts] == list(range(1, len(parts) + 1))
    assert sum(part.size for part in parts) == size
    offset = 0
    for part in parts:  # contiguous: no gap, no overlap
        assert part.offset == offset
        assert part == schedule.part(part.number) or part is parts[-1]
        offset = part.end
    assert offset == size
    for part in parts[:-1]:
        assert MIN_PART_SIZE <= part.size <= MAX_PART_SIZE
    if parts:
        assert 1 <= parts[-1].size <= MAX_PART_SIZE


@settings(max_examples=25)
@given(schedules)
def test_one_byte_over_capacity_is_refused(schedule: PartSchedule) -> None:
    assert len(list(schedule.parts_for(schedule.capacity))) == MAX_PARTS
    with pytest.raises(ValueError, match="capacity"):
        schedule.parts_for(schedule.capacity + 1)  # refused when asked, before any iteration


@given(schedule_and_size())
def test_schedule_survives_a_round_trip_through_storage(case: tuple[PartSchedule, int]) -> None:
    schedule, size = case
    restored = PartSchedule.from_dict(schedule.to_dict())
    assert restored == schedule
    assert restored.to_dict()["kind"] == ("fixed" if schedule.fixed else "growing")
    assert list(restored.parts_for(min(size, 50 * schedule.base))) == list(
        schedule.parts_for(min(size, 50 * schedule.base))
    )


@given(bases, st.booleans())
def test_planning_is_deterministic(base: int, fixed: bool) -> None:
    assert plan_schedule(base, fixed=fixed) == plan_schedule(base, fixed=fixed)


# -- concrete examples -----------------------------------------------------------------------


def test_default_8_mib_schedule_starts_uniform_then_doubles() -> None:
    schedule = plan_schedule(8 * MiB)
    assert not schedule.fixed
    assert all(schedule.part_size(n) == 8 * MiB for n in range(1, 1001))
    assert schedule.part_offset(1001) == 1000 * 8 * MiB
    first_larger = schedule.group + 1
    assert schedule.part_size(first_larger) == 16 * MiB
    assert schedule.part_size(MAX_PARTS) <= MAX_PART_SIZE


def test_small_file_is_one_short_part() -> None:
    parts = list(plan_schedule(8 * MiB).parts_for(1234))
    assert [(p.number, p.offset, p.size) for p in parts] == [(1, 0, 1234)]


def test_empty_file_has_no_parts() -> None:
    assert list(plan_schedule(8 * MiB).parts_for(0)) == []


def test_fixed_schedule_keeps_every_part_the_same_size() -> None:
    schedule = plan_schedule(8 * MiB, fixed=True)
    assert {schedule.part_size(n) for n in (1, 2, 5000, MAX_PARTS)} == {8 * MiB}
    assert schedule.capacity == 80_000 * MiB
    assert schedule.to_dict() == {"kind": "fixed", "base": 8 * MiB, "group": MAX_PARTS}


def test_large_base_is_fixed_even_when_growing_is_asked() -> None:
    # 525 MiB x 10,000 already exceeds 5 TiB: nothing to grow.
    schedule = plan_schedule(525 * MiB)
    assert schedule.fixed
    assert schedule.capacity >= 5 * TiB


def test_5_gib_parts_hold_the_largest_object() -> None:
    schedule = plan_schedule(5 * GiB)
    assert schedule.capacity == 10_000 * 5 * GiB
    assert len(list(schedule.parts_for(MAX_OBJECT_SIZE))) == 1024


@pytest.mark.parametrize(
    ("base", "group"),
    [(MIN_PART_SIZE - 1, 1), (MAX_PART_SIZE + 1, 1), (8 * MiB, 0), (8 * MiB, MAX_PARTS + 1)],
)
def test_schedule_outside_s3_limits_is_refused(base: int, group: int) -> None:
    with pytest.raises(ValueError):
        PartSchedule(base, group)


@pytest.mark.parametrize("number", [0, -1, MAX_PARTS + 1])
def test_part_numbers_outside_1_to_10000_are_refused(number: int) -> None:
    schedule = plan_schedule(8 * MiB)
    with pytest.raises(ValueError, match="part number"):
        schedule.part_size(number)
    with pytest.raises(ValueError, match="part number"):
        schedule.part_offset(number)
