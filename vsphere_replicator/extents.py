"""Byte ranges of a disk as (start, length) pairs, and the one way to merge them."""

from __future__ import annotations

from collections.abc import Iterable

Extent = tuple[int, int]


def merge_extents(extents: Iterable[Extent]) -> list[Extent]:
    """Sorted, with overlapping and touching ranges joined; empty ranges dropped."""
    merged: list[Extent] = []
    for start, length in sorted(e for e in extents if e[1] > 0):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            first, size = merged[-1]
            merged[-1] = (first, max(first + size, start + length) - first)
        else:
            merged.append((start, length))
    return merged
