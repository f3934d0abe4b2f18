"""The one retry policy: which failures are transient, how often and how far apart they are retried.

Every retried interaction with vCenter — SOAP calls (`Connection.call`,
logging in) and datastore HTTP reads (`transport.http`) — runs through
`RetryPolicy.retrying()`, a tenacity `Retrying` built from the policy's
numbers: at most `attempts` tries, exponential backoff from `initial_wait`
doubling up to `max_wait`, plus up to `jitter` seconds at random so that
parallel readers cut off together do not come back together.

Only transient failures are retried (`is_transient`): the network (refused,
reset, timed out, a TLS record cut off) and a response cut short. A
certificate that does not verify, a fault vCenter answered, bad credentials
are never retried. An expired session is not transient either: it is
renewed once, by `Connection.renewing_once`, around the retried call.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from vsphere_replicator.checks import check_callable, check_int, check_type
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.faults import TRANSIENT_ERRORS

# The network's errors and a response cut short (faults.TRANSIENT_ERRORS), and a TLS connection
# closed mid-handshake. ssl.SSLCertVerificationError is none of these: a certificate that stopped
# verifying is no hiccup, and is never retried.
TRANSIENT: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, ssl.SSLEOFError)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is worth another try of a call that is safe to repeat."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, ssl.SSLCertVerificationError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried, for SOAP calls and datastore reads alike.

    Waits are in seconds: before try n+1, `initial_wait * 2**(n-1)` (at most
    `max_wait`) plus a random share of `jitter`. `sleep` is injectable so
    tests record the waits instead of sleeping.
    """

    attempts: int = 5
    initial_wait: float = 0.5
    max_wait: float = 8.0
    jitter: float = 0.25
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        check_int(self.attempts, "attempts", 1, 100)
        for name in ("initial_wait", "max_wait", "jitter"):
            value = getattr(self, name)
            check_type(value, (int, float), name)
            if not 0 <= value <= 3600:
                raise InvalidInput(f"{name} must be between 0 and 3600 seconds, not {value}")
        check_callable(self.sleep, "sleep")

    def retrying(
        self,
        log: Any,
        event: str,
        *,
        idempotent: bool = True,
        retry_on: Callable[[BaseException], bool] = is_transient,
        **fields: Any,
    ) -> Retrying:
        """A tenacity `Retrying` for one call: `retrying(...)(fn, *args)` runs `fn` under this policy.

        Each retry logs `event` on `log` as a warning with the attempt number,
        the error's type and `fields`. With `idempotent=False` the call is
        tried once: a network error after the request left may mean it ran.
        `retry_on` tells which errors are worth another try (transient ones
        unless told otherwise: `tasks.run_task` retries a VM that was busy).
        When the tries run out, the last error is raised as it was.
        """

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(event, attempt=state.attempt_number, error=type(error).__name__, **fields)

        return Retrying(
            stop=stop_after_attempt(self.attempts if idempotent else 1),
            wait=wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + wait_random(0, self.jitter),
            retry=retry_if_exception(retry_on),
            sleep=self.sleep,
            before_sleep=log_retry,
            reraise=True,
        )
