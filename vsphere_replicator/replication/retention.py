"""Pruning restore points by count and by age; the newest stays, and so does one a test copy runs on."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from vsphere_replicator.connection import Connection
from vsphere_replicator.inventory import VMInfo, VMSelector, get_vm, vm_options
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.disks import remove_point_snapshot
from vsphere_replicator.replication.lease import Lease
from vsphere_replicator.replication.settings import CycleSettings
from vsphere_replicator.replication.state import ReplicaState, RestorePoint
from vsphere_replicator.replication.store import TEST_KEY, write_options
from vsphere_replicator.snapshots import find_snapshot


def expired(
    points: tuple[RestorePoint, ...], settings: CycleSettings, now: datetime | None = None
) -> tuple[RestorePoint, ...]:
    """The restore points retention drops: beyond `keep` newest, or older than `max_age`."""
    moment = now or datetime.now(UTC)
    newest = points[-1:]
    kept = points[-settings.keep :]
    if settings.max_age is not None:
        kept = tuple(p for p in kept if moment - p.created <= settings.max_age) or newest
    return tuple(p for p in points if p not in kept)


def prune(
    conn: Connection, lease: Lease, replica: VMInfo, state: ReplicaState, settings: CycleSettings
) -> ReplicaState:
    """Drop expired restore points: the state first, then their snapshots.

    A crash between the two leaves a restore-point snapshot no state names,
    which the next cycle's reconcile removes; the state never names a
    snapshot that is gone. A restore point a test failover's copy is a
    linked clone of is held until the copy is cleaned up.
    """
    drop = expired(state.restore_points, settings)
    if drop:  # the test copies (a read of every VM's options) only when a point would go
        held = {stamp.get("restore_point") for _, stamp in test_copies(conn, state)}
        drop = tuple(p for p in drop if p.id not in held)
    if not drop:
        return state
    state = replace(state, restore_points=tuple(p for p in state.restore_points if p not in drop))
    write_options(lease, state=state)
    failpoints.point("retention-recorded")
    log = get_logger(vm=replica.name, operation="prune")
    for point in drop:
        vm = get_vm(conn, VMSelector(moref=replica.moref))
        remove_point_snapshot(conn, vm, find_snapshot(vm, moref=point.snapshot))
        log.info("restore_point_pruned", restore_point=point.id)
        failpoints.point("restore-point-pruned")
    return state


def test_copies(conn: Connection, state: ReplicaState) -> list[tuple[str, dict[str, str]]]:
    """(moref, stamp) of each test copy of this replica's source; the stamp names its restore point."""
    found = []
    for moref, options in vm_options(conn, TEST_KEY).items():
        try:
            stamp = json.loads(options[TEST_KEY])
        except (ValueError, KeyError):
            continue
        if isinstance(stamp, dict) and stamp.get("source") == state.source.instance_uuid:
            found.append((moref, {str(k): str(v) for k, v in stamp.items()}))
    return found
