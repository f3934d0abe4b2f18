"""Sizes, durations and rates as people write them (`vsphere_replicator.units`): one reading everywhere."""

from __future__ import annotations

from datetime import timedelta

import pytest

from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.units import format_duration, format_size, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64M", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("2MiB", 2 << 20), (7, 7)],
)
def test_sizes_are_binary(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12Q", "-1", "1.5G", "M"])
def test_a_bad_size_names_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["1025T", "99999999999999999999T", "9" * 5000])
def test_a_size_beyond_1024t_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="size too large: '"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (" 1H ", timedelta(hours=1)),
    ],
)
def test_durations_read_as_written(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("value", ["", "15", "15x", "m", "30m1h", "1.5h", "-5m", "1h 30m", 90, None])
def test_a_bad_duration_names_the_value(value: object) -> None:
    with pytest.raises(InvalidInput, match=f"not a duration: {value!r}"):
        parse_duration(value)


def test_a_zero_duration_is_refused() -> None:
    with pytest.raises(InvalidInput, match="longer than zero"):
        parse_duration("0m")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("90s", "1m30s"), ("15m", "15m"), ("90m", "1h30m"), ("48h", "2d"), ("1d2h3m4s", "1d2h3m4s")],
)
def test_format_duration_is_canonical_and_reads_back(text: str, canonical: str) -> None:
    assert format_duration(parse_duration(text)) == canonical
    assert parse_duration(canonical) == parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100MiB/s", 100 << 20),
        ("50MB/s", 50 << 20),
        ("512K/s", 512 << 10),
        ("1G/s", 1 << 30),
        ("4096/s", 4096),
    ],
)
def test_rates_are_binary_bytes_per_second(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("value", ["100MiB", "fast/s", "1.5G/s", "/s", 100])
def test_a_bad_rate_names_the_value(value: object) -> None:
    with pytest.raises(InvalidInput, match=f"not a rate: {value!r}"):
        parse_rate(value)


@pytest.mark.parametrize("value", ["36501d", "99999999999999d", "9" * 5000 + "s", "876601h"])
def test_a_duration_beyond_100_years_is_refused_naming_it(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"a duration must be at most 36500d \(100 years\): '\d"):
        parse_duration(value)


def test_100_years_is_the_longest_duration() -> None:
    assert parse_duration("36500d") == timedelta(days=36500)


def test_a_zero_rate_is_refused() -> None:
    with pytest.raises(InvalidInput, match="more than zero"):
        parse_rate("0/s")


@pytest.mark.parametrize(
    ("count", "text"), [(64 << 20, "64M"), (1536 << 10, "1536K"), (4097, "4097"), (0, "0")]
)
def test_format_size_is_the_shortest_exact_text(count: int, text: str) -> None:
    assert format_size(count) == text
    assert parse_size(text) == count
