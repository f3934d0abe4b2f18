"""Extents: the one byte-range value and the one merge every layer uses."""

from __future__ import annotations

import itertools
import random

import pytest

from vsphere_replicator.cbt import ChangedArea
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.extents import Extent, merge_extents


def spans(*pairs: tuple[int, int]) -> list[Extent]:
    return [Extent(start, length) for start, length in pairs]


def test_an_extent_knows_its_end_and_is_a_frozen_value() -> None:
    area = Extent(4096, 512)
    assert area.end == 4608
    assert area == Extent(4096, 512) and hash(area) == hash(Extent(4096, 512))
    with pytest.raises(AttributeError):
        area.start = 0  # type: ignore[misc]  # frozen on purpose: the assignment must fail


def test_changed_area_is_the_extent_type() -> None:
    assert ChangedArea is Extent


@pytest.mark.parametrize(
    ("start", "length", "message"),
    [
        (-1, 10, "start must be >= 0"),
        (0, -1, "length must be >= 0"),
        (1.5, 10, "start must be a whole number, not float"),
        (0, "10", "length must be a whole number, not str"),
        (True, 10, "start must be a whole number, not bool"),
    ],
)
def test_negative_or_non_integer_bounds_are_refused(start: object, length: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Extent(start, length)  # type: ignore[arg-type]  # the wrong types are the point


def test_overlapping_extents_join() -> None:
    assert merge_extents(spans((0, 100), (50, 100))) == (Extent(0, 150),)


def test_touching_extents_join() -> None:
    assert merge_extents(spans((0, 100), (100, 28), (128, 1))) == (Extent(0, 129),)


def test_a_contained_extent_disappears_into_its_container() -> None:
    assert merge_extents(spans((0, 1000), (10, 20), (999, 1))) == (Extent(0, 1000),)


def test_disjoint_extents_stay_apart_and_come_back_sorted() -> None:
    assert merge_extents(spans((300, 10), (0, 10), (100, 10))) == tuple(spans((0, 10), (100, 10), (300, 10)))


def test_nothing_merges_to_nothing() -> None:
    assert merge_extents([]) == ()
    assert merge_extents(spans((5, 0), (0, 0))) == ()


def test_zero_length_extents_are_dropped_even_inside_a_gap() -> None:
    assert merge_extents(spans((0, 10), (15, 0), (20, 10))) == tuple(spans((0, 10), (20, 10)))


def test_zero_length_extents_do_not_bridge_a_gap_by_touching_both_sides() -> None:
    assert merge_extents(spans((0, 10), (10, 0), (11, 5))) == tuple(spans((0, 10), (11, 5)))


def test_any_iterable_is_accepted_once() -> None:
    assert merge_extents(iter(spans((10, 5), (0, 10)))) == (Extent(0, 15),)


def test_merging_agrees_with_a_byte_set_on_random_inputs() -> None:
    """Same bytes, sorted, no two extents overlapping or touching, none empty."""
    rng = random.Random(20260126)
    for _ in range(500):
        given = [Extent(rng.randrange(64), rng.randrange(12)) for _ in range(rng.randrange(8))]
        merged = merge_extents(given)
        wanted = {b for e in given for b in range(e.start, e.end)}
        assert {b for e in merged for b in range(e.start, e.end)} == wanted
        assert all(e.length > 0 for e in merged)
        assert all(a.end < b.start for a, b in itertools.pairwise(merged))
        assert merge_extents(merged) == merged
