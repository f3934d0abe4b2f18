"""Replication: protect a VM, run cycles, keep restore points, fail over and back."""

from vsphere_replicator.errors import IncrementalRefused, StateError, VerificationFailed
from vsphere_replicator.replication.access import (
    DiskAccess,
    HTTPDatastores,
    MountedDatastores,
    NBDDisks,
    VDDKDisks,
)
from vsphere_replicator.replication.cycle import replicate
from vsphere_replicator.replication.seed import protect
from vsphere_replicator.replication.settings import CycleResult, CycleSettings, ReplicaTarget
from vsphere_replicator.replication.sites import Sites
from vsphere_replicator.replication.state import ReplicaState, RestorePoint

__all__ = [
    "CycleResult",
    "CycleSettings",
    "DiskAccess",
    "HTTPDatastores",
    "IncrementalRefused",
    "MountedDatastores",
    "NBDDisks",
    "ReplicaState",
    "ReplicaTarget",
    "RestorePoint",
    "Sites",
    "StateError",
    "VDDKDisks",
    "VerificationFailed",
    "protect",
    "replicate",
]
