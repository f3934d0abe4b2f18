"""The bandwidth throttle (`vsphere_replicator.transport.Throttle`): a token bucket shared by transfers."""

from __future__ import annotations

import threading

import pytest

from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.transport import Throttle


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
