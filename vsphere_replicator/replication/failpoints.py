"""Named crash points in a cycle, for proving it is a transaction.

With VSPHERE_REPLICATOR_CRASH_AT=NAME:K the process kills itself (SIGKILL,
as a power cut or an OOM kill would) the K-th time it reaches point NAME;
with VSPHERE_REPLICATOR_CRASH_TRACE=FILE each point reached is appended to
FILE as "NAME:K".
Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_reached: dict[str, int] = {}


def point(name: str) -> None:
    """Mark a step boundary of a cycle: a crash here must be recoverable."""
    crash_at = os.environ.get("VSPHERE_REPLICATOR_CRASH_AT")
    trace = os.environ.get("VSPHERE_REPLICATOR_CRASH_TRACE")
    if crash_at is None and trace is None:
        return
    with _lock:
        _reached[name] = _reached.get(name, 0) + 1
        here = f"{name}:{_reached[name]}"
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(here + "\n")
        if crash_at == here:
            os.kill(os.getpid(), signal.SIGKILL)
