"""vsphere_replicator: replicate VMware VMs to a secondary site through vCenter.

Everything in `__all__` takes and returns plain data (frozen dataclasses,
strings, numbers); no pyVmomi object crosses this API.
"""

from vsphere_replicator.connection import Connection, ConnectionSettings, RetryPolicy, connect
from vsphere_replicator.errors import (
    AuthenticationFailed,
    CBTError,
    ConnectionFailed,
    InvalidInput,
    LabError,
    NotFound,
    PermissionDenied,
    ReplicatorError,
    SnapshotChainTooDeep,
    TaskFailed,
    TaskTimedOut,
    TLSVerificationFailed,
    VSphereFault,
)
from vsphere_replicator.inventory import (
    DiskInfo,
    SnapshotInfo,
    VMInfo,
    VMSelector,
    find_vms,
    get_vm,
    read_inventory,
)
from vsphere_replicator.logs import configure_logging, redact_secrets
from vsphere_replicator.snapshots import (
    OrphanSnapshot,
    QuiesceFallback,
    SnapshotResult,
    consolidate_if_needed,
    create_snapshot,
    find_orphans,
    find_snapshot,
    remove_all_snapshots,
    remove_snapshot,
    revert_to_snapshot,
    sweep_orphans,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "CBTError",
    "Connection",
    "ConnectionFailed",
    "ConnectionSettings",
    "DiskInfo",
    "InvalidInput",
    "LabError",
    "NotFound",
    "OrphanSnapshot",
    "PermissionDenied",
    "QuiesceFallback",
    "ReplicatorError",
    "RetryPolicy",
    "SnapshotChainTooDeep",
    "SnapshotInfo",
    "SnapshotResult",
    "TLSVerificationFailed",
    "TaskFailed",
    "TaskTimedOut",
    "VMInfo",
    "VMSelector",
    "VSphereFault",
    "__version__",
    "configure_logging",
    "connect",
    "consolidate_if_needed",
    "create_snapshot",
    "find_orphans",
    "find_snapshot",
    "find_vms",
    "get_vm",
    "read_inventory",
    "redact_secrets",
    "remove_all_snapshots",
    "remove_snapshot",
    "revert_to_snapshot",
    "sweep_orphans",
]
