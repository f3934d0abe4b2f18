"""Durations, rates, schedules and the bandwidth throttle: the policy layer's arithmetic."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.policies import (
    PolicyError,
    Schedule,
    Throttle,
    format_duration,
    parse_duration,
    parse_rate,
)

T0 = datetime(2025, 3, 1, 10, 7, 30, tzinfo=UTC)


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
    with pytest.raises(PolicyError, match=f"not a duration: {value!r}"):
        parse_duration(value)


def test_a_zero_duration_is_refused() -> None:
    with pytest.raises(PolicyError, match="longer than zero"):
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
    with pytest.raises(PolicyError, match=f"not a rate: {value!r}"):
        parse_rate(value)


@pytest.mark.parametrize("value", ["36501d", "99999999999999d", "9" * 5000 + "s", "876601h"])
def test_a_duration_beyond_100_years_is_refused_naming_it(value: str) -> None:
    with pytest.raises(PolicyError, match=r"a duration must be at most 36500d \(100 years\): '\d"):
        parse_duration(value)


def test_100_years_is_the_longest_duration() -> None:
    assert parse_duration("36500d") == timedelta(days=36500)


def test_a_zero_rate_is_refused() -> None:
    with pytest.raises(PolicyError, match="more than zero"):
        parse_rate("0/s")


def test_a_schedule_never_run_is_due_now() -> None:
    assert Schedule(interval=timedelta(minutes=15)).next_due(None, T0) == T0
    assert Schedule(cron="0 2 * * *").next_due(None, T0) == T0


def test_an_interval_counts_from_the_start_of_the_last_run() -> None:
    assert Schedule(interval=timedelta(minutes=15)).next_due(T0, T0 + timedelta(minutes=3)) == T0 + timedelta(
        minutes=15
    )


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("*/15 * * * *", datetime(2025, 3, 1, 10, 15, tzinfo=UTC)),
        ("0 2 * * *", datetime(2025, 3, 2, 2, 0, tzinfo=UTC)),
        ("30 10 * * 1-5", datetime(2025, 3, 3, 10, 30, tzinfo=UTC)),  # 1 March 2025 is a Saturday
    ],
)
def test_cron_is_due_at_the_first_slot_after_the_last_run(cron: str, expected: datetime) -> None:
    assert Schedule(cron=cron).next_due(T0, T0) == expected


def test_cron_runs_in_the_time_zone_of_the_clock() -> None:
    """02:00 means 02:00 where the runner's clock is, not 02:00 UTC."""
    plus2 = timezone(timedelta(hours=2))
    last = datetime(2025, 3, 1, 12, 0, tzinfo=plus2)
    assert Schedule(cron="0 2 * * *").next_due(last, last) == datetime(2025, 3, 2, 2, 0, tzinfo=plus2)


def test_a_missed_slot_runs_once_and_then_the_schedule_resumes() -> None:
    schedule = Schedule(cron="0 * * * *")
    due = schedule.next_due(T0, T0 + timedelta(days=2))  # the runner was down for two days
    assert due == datetime(2025, 3, 1, 11, 0, tzinfo=UTC)  # in the past: due at once, not 48 times
    restarted = T0 + timedelta(days=2)
    assert schedule.next_due(restarted, restarted) == datetime(2025, 3, 3, 11, 0, tzinfo=UTC)


def test_a_schedule_needs_exactly_one_of_interval_and_cron() -> None:
    with pytest.raises(PolicyError, match="exactly one"):
        Schedule()
    with pytest.raises(PolicyError, match="exactly one"):
        Schedule(interval=timedelta(minutes=1), cron="* * * * *")


class FakeClock:
    """Time that moves only when somebody sleeps; records each sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def test_the_throttle_allows_one_second_of_burst_then_holds_the_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(1000, clock=clock, sleep=clock.sleep)
    throttle.consume(1000)  # the burst
    assert clock.now == 0
    for _ in range(10):
        throttle.consume(500)
    assert clock.now == pytest.approx(5.0)  # 5000 bytes beyond the burst at 1000 B/s


def test_the_throttle_serves_a_request_larger_than_the_burst() -> None:
    clock = FakeClock()
    throttle = Throttle(1000, clock=clock, sleep=clock.sleep)
    throttle.consume(4000)
    assert clock.sleeps == [pytest.approx(3.0)]


def test_idle_time_refills_the_bucket_but_never_beyond_one_second() -> None:
    clock = FakeClock()
    throttle = Throttle(1000, clock=clock, sleep=clock.sleep)
    throttle.consume(1000)
    clock.now += 60  # a long pause earns one second of burst, not sixty
    throttle.consume(1000)
    assert clock.sleeps == []
    throttle.consume(1000)
    assert clock.sleeps == [pytest.approx(1.0)]


def test_the_throttle_holds_the_rate_across_threads() -> None:
    """With time frozen, the last of many concurrent callers waits for every byte before it."""
    clock = FakeClock()
    waits: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            waits.append(seconds)

    throttle = Throttle(1000, clock=clock, sleep=record)
    start = threading.Barrier(8, timeout=5)

    def worker() -> None:
        start.wait()
        for _ in range(25):
            throttle.consume(100)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert len(waits) == 8 * 25 - 10  # the first 1000 bytes were the burst
    assert max(waits) == pytest.approx((8 * 25 * 100 - 1000) / 1000)


@pytest.mark.parametrize("rate", [0, -5])
def test_a_throttle_needs_a_positive_rate(rate: int) -> None:
    with pytest.raises(InvalidInput, match="positive"):
        Throttle(rate)


def test_a_negative_consume_is_refused() -> None:
    with pytest.raises(InvalidInput, match="negative"):
        Throttle(10).consume(-1)
