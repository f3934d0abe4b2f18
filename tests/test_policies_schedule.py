"""Schedules: when an interval or cron policy is next due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from vsphere_replicator.policies import PolicyError, Schedule

T0 = datetime(2025, 3, 1, 10, 7, 30, tzinfo=UTC)


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
