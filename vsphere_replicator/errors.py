"""The library's exceptions: one tree, each class a problem a caller can act on.

ReplicatorError                    root of everything raised on purpose
 ├── InvalidInput (ValueError)     what the caller asked for is wrong; nothing was changed
 │    ├── SnapshotChainTooDeep     one more snapshot would exceed vSphere's 32 levels
 │    ├── PolicyError              a policy, its settings or a policy file is wrong; nothing ran
 │    │    ├── PolicyPluginError   an installed policy plugin is broken
 │    │    └── PolicyFileError     every problem of a policy file, located  (policies.policyfile)
 │    └── UsageError               a command line that cannot be done as asked  (cli.exits)
 ├── ConnectionFailed              the network failed (after retries)
 ├── TLSVerificationFailed         the server's certificate is not the one trusted
 ├── AuthenticationFailed          the credentials or the session were refused
 ├── PermissionDenied              the session lacks a privilege
 ├── NotFound (LookupError)        no object matches (VM, snapshot, datastore, …)
 ├── VSphereFault                  any other fault vCenter answered with
 │    ├── ArgumentRejected         vCenter's InvalidArgument: a request it refused, not our input
 │    └── TaskFailed               a vCenter task ended in error
 ├── TaskTimedOut                  a task did not finish in time; it may still be running
 ├── TransportError                disk bytes could not be read or written (after retries)
 ├── CBTError                      Changed Block Tracking cannot be used as asked
 │    └── ChangeIdInvalid          a change id is stale or unknown: read the disk in full
 ├── StateError                    a replica's replication state is missing, unreadable or wrong
 ├── ConcurrentChange              the VM's configuration changed between our read and our write
 ├── Busy                          another operation holds the VM's lease  (replication.lease)
 ├── LeaseLost                     our lease was taken over; we stopped  (replication.lease)
 ├── IncrementalRefused            the changes exceed the share an incremental may move
 ├── VerificationFailed            a restore point's bytes differ from its source snapshot
 ├── LabError                      the embedded lab could not be built, started or driven
 └── MissingExtra (ImportError)    an optional extra is not installed: pip install 'vsphere-replicator[…]'

User input and vCenter's answers stay apart: only the InvalidInput branch
means "the arguments are wrong" (the CLI's exit 2); a fault vCenter answers
with is a VSphereFault, even its own InvalidArgument. The classes marked
with a module live beside the types they carry; every other one is defined
here. tests/test_errors_tree.py keeps this drawing and the code in step.

Every error that concerns a VM carries `.vm`; those that came from vCenter
carry `.fault` (the vim25 fault type name, e.g. "FileFault"). Messages name
the object and the problem, never a password or a session cookie.
"""

from __future__ import annotations

from collections.abc import Sequence


class ReplicatorError(Exception):
    """Root of every error this library raises on purpose."""

    def __init__(self, message: str, *, vm: str | None = None, fault: str | None = None) -> None:
        super().__init__(message)
        self.vm = vm
        self.fault = fault


class LabError(ReplicatorError):
    """The lab could not be built, started, stopped or driven."""


class MissingExtra(ReplicatorError, ImportError):
    """A feature needs an optional extra that is not installed; `extra` names it, the message says how."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class InvalidInput(ReplicatorError, ValueError):
    """The arguments are wrong; nothing was changed."""


class SnapshotChainTooDeep(InvalidInput):
    """Another snapshot would exceed the 32 levels vSphere supports."""


class PolicyError(InvalidInput):
    """A policy, its settings or a policy file is wrong; nothing ran.

    `key` names the setting at fault when there is one; `problems` lists
    every (key, reason) found, so a policy file can point at each of them.
    """

    def __init__(
        self, message: str, *, key: str | None = None, problems: Sequence[tuple[str | None, str]] = ()
    ) -> None:
        super().__init__(message)
        self.key = key
        self.problems: tuple[tuple[str | None, str], ...] = tuple(problems) or ((key, message),)


class PolicyPluginError(PolicyError):
    """An installed policy plugin is broken; `.plugin` is its entry-point name."""

    def __init__(self, message: str, *, plugin: str) -> None:
        super().__init__(message)
        self.plugin = plugin


class ConnectionFailed(ReplicatorError):
    """vCenter could not be reached, or the connection broke and retries ran out."""


class TLSVerificationFailed(ReplicatorError):
    """The server's certificate did not verify against the trusted CA or thumbprint."""


class AuthenticationFailed(ReplicatorError):
    """vCenter refused the credentials."""


class PermissionDenied(ReplicatorError):
    """The session lacks a privilege the operation needs."""


class NotFound(ReplicatorError, LookupError):
    """Nothing matches what was asked for."""


class VSphereFault(ReplicatorError):
    """vCenter answered with a fault this library has no more specific class for."""


class TaskFailed(VSphereFault):
    """A vCenter task ended in error; `.task` names it."""

    def __init__(self, message: str, *, task: str, vm: str | None = None, fault: str | None = None) -> None:
        super().__init__(message, vm=vm, fault=fault)
        self.task = task


class ArgumentRejected(VSphereFault):
    """vCenter refused an argument of a request (vmodl's InvalidArgument).

    A fault of the request as vCenter saw it — a setting the library built,
    or state that changed meanwhile — not of what the caller typed: the
    caller's own arguments are checked before any call (InvalidInput).
    """


class TaskTimedOut(ReplicatorError):
    """The task did not finish in time; it may still be running in vCenter."""


class TransportError(ReplicatorError):
    """Bytes could not be read or written (after the transport's own retries)."""


class CBTError(ReplicatorError):
    """Changed Block Tracking cannot be used as asked."""


class ChangeIdInvalid(CBTError):
    """vCenter no longer knows the change id (CBT reset, host crash, …); the disk needs a full read.

    `.disk` is the device key, `.change_id` the id that failed, `.reason` why.
    """

    def __init__(
        self,
        message: str,
        *,
        vm: str | None,
        disk: int,
        change_id: str,
        reason: str,
        fault: str | None = None,
    ) -> None:
        super().__init__(message, vm=vm, fault=fault)
        self.disk = disk
        self.change_id = change_id
        self.reason = reason


class StateError(ReplicatorError):
    """The replication state on a replica is missing, unreadable or contradicts vCenter."""


class ConcurrentChange(ReplicatorError):
    """The VM's configuration changed between our read and our write (vCenter's ConcurrentAccess)."""


class IncrementalRefused(ReplicatorError):
    """The changes exceed the share of a disk the policy allows an incremental to move."""


class VerificationFailed(ReplicatorError):
    """A restore point's bytes differ from the source snapshot they were copied from."""
