"""What each exit code of `vsphere-replicator` means, and which errors end with which.

The table and the mapping live together so that they cannot disagree: the
`--help` epilog and the user guide print EXIT_CODES, and `classify` is the
only place that turns an exception into a code.

Only bad input exits 2: an argparse error, or an InvalidInput the library
raised about its arguments. A fault vCenter answered with (a VSphereFault,
its InvalidArgument included), a state that blocks the operation
(StateError), another holder of the lease (Busy, 5) and the machine's own
errors (OSError) never do.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsphere_replicator.errors import IncrementalRefused, InvalidInput, ReplicatorError
from vsphere_replicator.policies import PolicyFileError
from vsphere_replicator.replication.lease import Busy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RPO_MISSED = 3
EXIT_REFUSED = 4
EXIT_BUSY = 5
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_FAILED: "failed: vCenter refused or could not be reached, a fault, something not found, "
    "a corrupt restore point; status: a protected VM is stuck (its last cycle failed, its state is "
    "unreadable, or a failover or failback is unfinished)",
    EXIT_USAGE: "usage or invalid input (bad option or value, invalid policy file, a request that "
    "cannot be done as asked); nothing was changed",
    EXIT_RPO_MISSED: "status: at least one protected VM misses its target RPO, and none is stuck",
    EXIT_REFUSED: "replicate: the incremental was refused by --max-change-share; nothing was changed",
    EXIT_BUSY: "busy: another operation holds the VM's lease; nothing was changed, try again later",
    EXIT_INTERNAL: "internal error (a bug: please report it with the command that caused it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class UsageError(InvalidInput):
    """The command line asks for something that cannot be done as asked (argparse's errors too)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """How a command that raised ends: its exit code, the stderr prefix (may be empty), and the message.

    The message is one line, except a policy file's: one line per problem.
    """

    code: int
    prefix: str
    message: str
    kind: str


def _first_line(text: str, limit: int | None = None) -> str:
    line = (text.splitlines() or [""])[0]
    return line[:limit] if limit is not None else line


def classify(exc: BaseException) -> Failure:
    """The exit code, prefix and message for an exception that ended a command."""
    kind = type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return Failure(EXIT_INTERRUPTED, "error", "interrupted", kind)
    if isinstance(exc, Busy):
        return Failure(EXIT_BUSY, "busy", str(exc), kind)
    if isinstance(exc, IncrementalRefused):
        return Failure(EXIT_REFUSED, "refused", str(exc), kind)
    if isinstance(exc, PolicyFileError):  # one `file:line:column: problem` line per problem, as compilers do
        return Failure(EXIT_USAGE, "", str(exc), kind)
    if isinstance(exc, InvalidInput):
        return Failure(EXIT_USAGE, "error", str(exc), kind)
    if isinstance(exc, ReplicatorError | OSError):  # vCenter, the state, the machine: not the input
        return Failure(EXIT_FAILED, "error", str(exc), kind)
    # A bug: one line, not a traceback, and a way to tell it from bad input.
    first = _first_line(str(exc), 200)
    return Failure(EXIT_INTERNAL, "error", f"internal error: {kind}: {first}; please report", kind)
