"""Part planning: which byte range is part N, for files whose final size may not be known yet.

Only S3's limits live here (5 MiB minimum part except the last, 5 GiB maximum part, 10,000 parts,
5 TiB objects). The schedule is a pure function of two numbers, so it is stored with each stream
and a restarted daemon plans exactly the same parts even if the configuration changed meanwhile.

Growing schedule: parts start at `base` bytes and double every `group` parts (capped at 5 GiB).
`group` is the largest value for which 10,000 parts still hold 5 TiB, so small and medium files
get uniform `base`-sized parts and only very long recordings see larger ones. The fixed schedule
(`group` = 10,000) keeps every part at `base`, as Cloudflare R2 requires; it caps objects at
`base` × 10,000.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB


@dataclass(frozen=True)
class Part:
    number: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class PartSchedule:
    base: int
    group: int

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.base <= MAX_PART_SIZE:
            raise ValueError(f"part size {self.base} outside {MIN_PART_SIZE}..{MAX_PART_SIZE}")
        if not 1 <= self.group <= MAX_PARTS:
            raise ValueError(f"group {self.group} outside 1..{MAX_PARTS}")

    @property
    def fixed(self) -> bool:
        return self.group >= MAX_PARTS

    def part_size(self, number: int) -> int:
        """Planned size of part `number` (1-based), before any truncation at end of file."""
        _check_number(number)
        doublings = (number - 1) // self.group
        if doublings >= 40:  # far beyond the cap; avoids huge ints
            return MAX_PART_SIZE
        return min(self.base << doublings, MAX_PART_SIZE)

    def part_offset(self, number: int) -> int:
        _check_number(number)
        offset = 0
        index = number - 1  # parts before this one
        doublings = 0
        while index > 0:
            in_group = min(index, self.group)
            offset += in_group * min(self.base << doublings, MAX_PART_SIZE)
            index -= in_group
            doublings += 1
        return offset

    def part(self, number: int) -> Part:
        return Part(number, self.part_offset(number), self.part_size(number))

    @property
    def capacity(self) -> int:
        """Largest object this schedule can hold in 10,000 parts."""
        return self.part_offset(MAX_PARTS) + self.part_size(MAX_PARTS)

    def parts_for(self, size: int) -> Iterator[Part]:
        """The parts covering a file of `size` bytes; the last one truncated to the end of file.

        Checks `size` when called, not on first iteration, so the error surfaces where it is made.
        """
        if size > self.capacity:
            raise ValueError(f"{size} bytes exceed this schedule's capacity of {self.capacity}")
        return self._iter_parts(size)

    def _iter_parts(self, size: int) -> Iterator[Part]:
        number, offset = 1, 0
        while offset < size:
            planned = self.part_size(number)
            yield Part(number, offset, min(planned, size - offset))
            offset += planned
            number += 1

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "fixed" if self.fixed else "growing", "base": self.base, "group": self.group}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartSchedule:
        return cls(base=int(data["base"]), group=int(data["group"]))


def _check_number(number: int) -> None:
    if not 1 <= number <= MAX_PARTS:
        raise ValueError(f"part number {number} outside 1..{MAX_PARTS}")


@lru_cache(maxsize=64)
def plan_schedule(part_size: int, *, fixed: bool = False) -> PartSchedule:
    """The schedule for new streams: fixed, or growing with the largest group that fits 5 TiB."""
    if fixed or part_size * MAX_PARTS >= MAX_OBJECT_SIZE:
        return PartSchedule(part_size, MAX_PARTS)
    low, high = 1, MAX_PARTS  # capacity shrinks as the group grows: find the last that fits
    while low < high:
        mid = (low + high + 1) // 2
        if PartSchedule(part_size, mid).capacity >= MAX_OBJECT_SIZE:
            low = mid
        else:
            high = mid - 1
    return PartSchedule(part_size, low)
