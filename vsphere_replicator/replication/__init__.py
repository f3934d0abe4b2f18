"""Replication: protect a VM, run cycles, keep restore points, fail over and back.

What an idempotent caller (the Ansible collection) needs is public here: one
VM's protection (`protection_of`), changing or ending it (`update_settings`,
`unprotect`), the recovery operations and what exists of them
(`failover_test_copies`), and the snapshot sweep with its dry run.
`failback` stays in its module (`replication.failback.failback`): a function
of that name here would shadow the submodule for `mock.patch` and `import ... as`.
"""

from vsphere_replicator.errors import IncrementalRefused, StateError, VerificationFailed
from vsphere_replicator.replication.access import (
    DiskAccess,
    HTTPDatastores,
    MountedDatastores,
    NBDDisks,
    VDDKDisks,
)
from vsphere_replicator.replication.cycle import replicate
from vsphere_replicator.replication.failover import (
    FailoverCopy,
    FailoverResult,
    cleanup_test_failover,
    failover_test_copies,
    planned_failover,
    start_test_failover,
    unplanned_failover,
)
from vsphere_replicator.replication.protection import (
    SettingsChange,
    UnprotectResult,
    unprotect,
    update_settings,
)
from vsphere_replicator.replication.restore_points import list_restore_points
from vsphere_replicator.replication.seed import protect
from vsphere_replicator.replication.settings import CycleResult, CycleSettings, ReplicaTarget
from vsphere_replicator.replication.sites import Sites
from vsphere_replicator.replication.state import ReplicaState, RestorePoint
from vsphere_replicator.replication.status import ProtectionStatus, protection_of, protection_status
from vsphere_replicator.replication.sweep import SpareReason, SweepResult, sweep_snapshots

__all__ = [
    "CycleResult",
    "CycleSettings",
    "DiskAccess",
    "FailoverCopy",
    "FailoverResult",
    "HTTPDatastores",
    "IncrementalRefused",
    "MountedDatastores",
    "NBDDisks",
    "ProtectionStatus",
    "ReplicaState",
    "ReplicaTarget",
    "RestorePoint",
    "SettingsChange",
    "Sites",
    "SpareReason",
    "StateError",
    "SweepResult",
    "UnprotectResult",
    "VDDKDisks",
    "VerificationFailed",
    "cleanup_test_failover",
    "failover_test_copies",
    "list_restore_points",
    "planned_failover",
    "protect",
    "protection_of",
    "protection_status",
    "replicate",
    "start_test_failover",
    "sweep_snapshots",
    "unplanned_failover",
    "unprotect",
    "update_settings",
]
