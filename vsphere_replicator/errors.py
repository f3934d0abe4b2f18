"""The library's exceptions: one tree, each class a problem a caller can act on.

ReplicatorError                  root of everything raised on purpose
 ├── LabError                    the embedded lab could not be built, started or driven
 ├── InvalidInput (ValueError)   bad arguments; nothing was changed
 │    └── SnapshotChainTooDeep   one more snapshot would exceed vSphere's 32 levels
 ├── ConnectionFailed            the network failed (after retries)
 ├── TLSVerificationFailed       the server's certificate is not the one trusted
 ├── AuthenticationFailed        the credentials were refused
 ├── PermissionDenied            the session lacks a privilege
 ├── NotFound                    no object matches (VM, snapshot, datastore, …)
 ├── VSphereFault                any other fault vCenter answered with
 │    └── TaskFailed             a vCenter task ended in error
 └── CBTError                    Changed Block Tracking cannot be used as asked
      └── ChangeIdInvalid         a change id is stale or unknown: read the disk in full

Every error that concerns a VM carries `.vm`; those that came from vCenter
carry `.fault` (the vim25 fault type name, e.g. "FileFault"). Messages name
the object and the problem, never a password or a session cookie.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Root of every error this library raises on purpose."""

    def __init__(self, message: str, *, vm: str | None = None, fault: str | None = None) -> None:
        super().__init__(message)
        self.vm = vm
        self.fault = fault


class LabError(ReplicatorError):
    """The lab could not be built, started, stopped or driven."""


class InvalidInput(ReplicatorError, ValueError):
    """The arguments are wrong; nothing was changed."""


class SnapshotChainTooDeep(InvalidInput):
    """Another snapshot would exceed the 32 levels vSphere supports."""


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
