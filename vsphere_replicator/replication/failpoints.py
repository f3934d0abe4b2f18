"""Named step boundaries of every operation that changes a VM, for proving each is a transaction.

With VSPHERE_REPLICATOR_CRASH_AT=NAME:K the process kills itself (SIGKILL,
as a power cut or an OOM kill would) the K-th time it reaches point NAME;
with VSPHERE_REPLICATOR_CRASH_TRACE=FILE each point reached is appended to
FILE as "NAME:K".

In-process, `armed("NAME:K")` raises Crash there instead: a BaseException
that no `except Exception` clean-up sees, so the operation stops as dead as
a killed process would (only `finally` blocks closing local files run).
`armed("NAME:K", action)` runs `action` there instead (e.g. to arm a lab
fault at exactly that step); `traced()` collects the points reached.
Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_reached: dict[str, int] = {}
_armed: dict[str, Callable[[], object]] = {}
_traces: list[list[str]] = []


class Crash(BaseException):
    """A simulated process death at a failpoint."""


def _crash() -> None:
    raise Crash("simulated crash")


def point(name: str) -> None:
    """Mark a step boundary: a crash or a fault here must be recoverable."""
    crash_at = os.environ.get("VSPHERE_REPLICATOR_CRASH_AT")
    trace = os.environ.get("VSPHERE_REPLICATOR_CRASH_TRACE")
    if crash_at is None and trace is None and not _armed and not _traces:
        return
    with _lock:
        _reached[name] = _reached.get(name, 0) + 1
        here = f"{name}:{_reached[name]}"
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(here + "\n")
        for collected in _traces:
            collected.append(here)
        if crash_at == here:
            os.kill(os.getpid(), signal.SIGKILL)
        action = _armed.pop(here, None)
    if action is not None:
        action()


@contextmanager
def armed(at: str, action: Callable[[], object] = _crash) -> Iterator[None]:
    """Within the block, run `action` (default: raise Crash) the K-th time point NAME is reached.

    What `action` returns is ignored.
    """
    with _lock:
        _reached.clear()
        _armed[at] = action
    try:
        yield
    finally:
        with _lock:
            _armed.pop(at, None)
            _reached.clear()


@contextmanager
def traced() -> Iterator[list[str]]:
    """Collect "NAME:K" for every point reached within the block, in order."""
    collected: list[str] = []
    with _lock:
        _reached.clear()
        _traces.append(collected)
    try:
        yield collected
    finally:
        with _lock:
            _traces.remove(collected)
            _reached.clear()
