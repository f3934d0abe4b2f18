"""Named crash points in a cycle, for proving it is a transaction.

With VSPHERE_REPLICATOR_CRASH_AT=N the process kills itself (SIGKILL, as a
power cut or an OOM kill would) when it reaches the N-th point; with
VSPHERE_REPLICATOR_CRASH_TRACE=FILE each point reached is appended to FILE.
Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_reached = 0


def point(name: str) -> None:
    """Mark a step boundary of a cycle: a crash here must be recoverable."""
    global _reached
    crash_at = os.environ.get("VSPHERE_REPLICATOR_CRASH_AT")
    trace = os.environ.get("VSPHERE_REPLICATOR_CRASH_TRACE")
    if crash_at is None and trace is None:
        return
    with _lock:
        _reached += 1
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(f"{_reached} {name}\n")
        if crash_at is not None and _reached == int(crash_at):
            os.kill(os.getpid(), signal.SIGKILL)
