"""A bandwidth cap shared by every transfer of a run: a thread-safe token bucket.

`Throttle.consume` is what `replicate(throttle=...)` calls with each chunk's
size before writing it; the policy runner makes one per run for a policy
file's `limits.bandwidth`, so all of that run's cycles share the cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vsphere_replicator.errors import InvalidInput

__all__ = ["Throttle"]


class Throttle:
    """Holds all callers together to `rate` bytes per second, allowing a burst of one second's worth.

    `consume(n)` reserves `n` bytes at once and then sleeps off any debt
    outside the lock, so concurrent callers queue in arrival order and a
    request larger than the burst is still served (it just waits longer).
    `clock` and `sleep` are injectable so tests run on a fake clock.
    """

    def __init__(
        self,
        rate_bytes_per_s: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(rate_bytes_per_s, bool) or rate_bytes_per_s <= 0:
            raise InvalidInput(
                f"a throttle rate must be a positive number of bytes per second, not {rate_bytes_per_s}"
            )
        self._rate = float(rate_bytes_per_s)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self._rate
        self._updated = clock()

    @property
    def rate(self) -> int:
        """The cap, in bytes per second."""
        return int(self._rate)

    def consume(self, n: int) -> None:
        """Block until `n` more bytes fit under the cap; raise InvalidInput when `n` is negative."""
        if n < 0:
            raise InvalidInput(f"cannot consume a negative number of bytes: {n}")
        if n == 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self._rate, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._tokens -= n
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
