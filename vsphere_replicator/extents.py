"""Byte ranges of a disk, as one value type, and the one way to merge them.

Every layer that speaks of "which bytes" — CBT's changed areas, the reads a
transport is asked for, the union of two change sets at failback, the ranges
a checksum covers — passes `Extent` values, never bare `(start, length)`
tuples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vsphere_replicator.checks import shown
from vsphere_replicator.errors import InvalidInput


@dataclass(frozen=True, slots=True, order=True)
class Extent:
    """Bytes [start, start + length) of a disk; both whole numbers >= 0.

    A zero-length extent is valid (it names no bytes); `merge_extents`
    drops it. Extents order by start, then length.
    """

    start: int
    length: int

    def __post_init__(self) -> None:
        for value, what in ((self.start, "start"), (self.length, "length")):
            # bool is an int to isinstance; a flag where an offset is due is a mistake, not a 1.
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(
                    f"an extent's {what} must be a whole number, not {type(value).__name__} {shown(value)}"
                )
            if value < 0:
                raise InvalidInput(f"an extent's {what} must be >= 0, not {value}")

    @property
    def end(self) -> int:
        """The first byte after the extent."""
        return self.start + self.length


def merge_extents(extents: Iterable[Extent]) -> tuple[Extent, ...]:
    """The same bytes as `extents`, as few extents as possible: sorted, disjoint, not touching.

    Overlapping ranges (the union of two cycles' or two sides' changes) and
    touching ones (CBT answers a run of blocks window by window) are both
    joined: every caller wants the set of bytes, and fewer, longer ranges
    mean fewer reads. Zero-length extents are dropped; the input may be in
    any order.
    """
    merged: list[Extent] = []
    for extent in sorted(e for e in extents if e.length):
        if merged and extent.start <= merged[-1].end:
            last = merged[-1]
            if extent.end > last.end:
                merged[-1] = Extent(last.start, extent.end - last.start)
        else:
            merged.append(extent)
    return tuple(merged)


__all__ = ["Extent", "merge_extents"]
