"""Translate pyVmomi faults into the library's errors, at the SOAP boundary.

`vmodl.fault.*` and `vim.fault.*` never escape the layer that talks SOAP:
`Connection.call` (and the connect and task-wait paths) catch SOAP_ERRORS and
raise `translate(...)`, the most specific `ReplicatorError`, with the original
fault chained as `__cause__`. vCenter's own InvalidArgument is a VSphereFault
(ArgumentRejected), never InvalidInput: that branch is for the caller's input.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from xml.parsers.expat import ExpatError

from pyVmomi import vim, vmodl

from vsphere_replicator.errors import (
    ArgumentRejected,
    AuthenticationFailed,
    ConnectionFailed,
    NotFound,
    PermissionDenied,
    ReplicatorError,
    TLSVerificationFailed,
    VSphereFault,
)

# Errors of the network or of a response cut short: the call may be retried
# when it is safe to repeat.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    http.client.HTTPException,
    socket.timeout,
    TimeoutError,
    ExpatError,
)


# Everything a SOAP call can raise that translate() knows.
SOAP_ERRORS: tuple[type[BaseException], ...] = (vmodl.MethodFault, ssl.SSLError, *TRANSIENT_ERRORS, OSError)


def fault_name(fault: BaseException) -> str:
    """'FileFault' for vim.fault.FileFault."""
    return type(fault).__name__.rsplit(".", 1)[-1]


def fault_message(fault: BaseException) -> str:
    msg = getattr(fault, "msg", None) or getattr(fault, "localizedMessage", None)
    return str(msg) if msg else fault_name(fault)


def translate(exc: BaseException, *, what: str, vm: str | None = None) -> ReplicatorError:
    """The library error for `exc`, raised while doing `what`."""
    name = fault_name(exc)
    detail = f"{what}: {fault_message(exc)}"
    error: ReplicatorError
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or (exc.args[0] if exc.args else "")
        error = TLSVerificationFailed(f"{what}: the server's certificate did not verify ({reason})")
    elif isinstance(exc, vim.fault.InvalidLogin):
        error = AuthenticationFailed(f"{what}: vCenter refused the user name or password", fault=name)
    elif isinstance(exc, vim.fault.NotAuthenticated):
        error = AuthenticationFailed(f"{what}: the session is not authenticated", fault=name)
    elif isinstance(exc, vim.fault.NoPermission):
        privilege = getattr(exc, "privilegeId", None) or "a privilege"
        error = PermissionDenied(f"{what}: the session lacks {privilege}", vm=vm, fault=name)
    elif isinstance(exc, vmodl.fault.ManagedObjectNotFound | vim.fault.NotFound):
        error = NotFound(detail, vm=vm, fault=name)
    elif isinstance(exc, vmodl.fault.InvalidArgument):
        prop = getattr(exc, "invalidProperty", None)
        error = ArgumentRejected(f"{detail}" + (f" (argument {prop})" if prop else ""), vm=vm, fault=name)
    elif isinstance(exc, vmodl.MethodFault):
        error = VSphereFault(detail, vm=vm, fault=name)
    else:
        error = ConnectionFailed(f"{what}: {type(exc).__name__}: {exc}", vm=vm)
    return error
