"""Listing a replica's restore points and checking one against the digests recorded at its creation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vsphere_replicator.checks import check_callable
from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound, StateError
from vsphere_replicator.inventory import VMRef, resolve_vm, snapshot_disks
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.replication.replica import replica_of, require_replica
from vsphere_replicator.replication.state import ReplicaState, RestorePoint, RestorePoints
from vsphere_replicator.verify import checksum


@dataclass(frozen=True, slots=True)
class DiskCheck(Shown):
    replica_key: int
    expected: str
    actual: str

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True, slots=True)
class RestorePointCheck(Shown):
    vm: str
    restore_point: str
    disks: tuple[DiskCheck, ...]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.disks)


def replica_state(conn: Connection, vm: VMRef) -> ReplicaState:
    """The state of `vm`'s replica on `conn`'s vCenter.

    A VM named that is not in this vCenter is looked up by the name its
    replica's state records: on the recovery site, whose vCenter never had
    the source, or after the source site is lost.
    """
    try:
        source = resolve_vm(conn, vm)
    except NotFound as missing:
        if not isinstance(vm, str):
            raise
        try:
            replica = replica_of(conn, vm, promoted=None)
        except NotFound:
            raise missing from None  # no such VM, and no replica of one by that name either
        name = vm
    else:
        replica = require_replica(conn, source)
        name = source.name
    if replica.state is None:
        raise StateError(f"protecting {name} is unfinished: run protect again", vm=name)
    return replica.state


def list_restore_points(conn: Connection, vm: VMRef) -> RestorePoints:
    """The protected VM's restore points, oldest first (a tuple that shows itself as a table)."""
    state = replica_state(conn, vm)
    return RestorePoints(state.restore_points, vm=state.source.name)


def find_restore_point(state: ReplicaState, point_id: str | None) -> RestorePoint:
    """The restore point with that id, or the latest for None."""
    if point_id is None:
        return state.latest
    for point in state.restore_points:
        if point.id == point_id:
            return point
    known = ", ".join(p.id for p in state.restore_points)
    raise NotFound(f"{state.source.name} has no restore point {point_id!r} (it has {known})")


def verify_restore_point(
    conn: Connection,
    vm: VMRef,
    replica_access: DiskAccess,
    point_id: str | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> RestorePointCheck:
    """Re-read a restore point's disks and compare them with the digests taken when it was made.

    `on_progress(done, total)` follows the bytes read over all its disks.
    """
    check_callable(on_progress, "on_progress", optional=True)
    source = resolve_vm(conn, vm)
    replica = require_replica(conn, source)
    if replica.state is None:
        raise StateError(f"protecting {source.name} is unfinished: run protect again", vm=source.name)
    state = replica.state
    point = find_restore_point(state, point_id)
    if not point.digests:
        raise InvalidInput(
            f"restore point {point.id} of {state.source.name} was made without verify, so it has no "
            "digests to check against; enable verify in the cycle settings"
        )
    frozen = {d.key: d for d in snapshot_disks(conn, point.snapshot)}
    missing = [key for key, _ in point.digests if key not in frozen]
    if missing:
        raise StateError(f"restore point {point.id} has lost disks {missing} of its replica")
    checks = []
    total = sum(frozen[key].capacity for key, _ in point.digests)
    done = 0

    def read(count: int) -> None:
        nonlocal done
        done += count
        if on_progress is not None:
            on_progress(done, total)

    for key, expected in point.digests:
        device = replica_access.source(frozen[key], vm=replica.vm.moref, snapshot=point.snapshot)
        try:
            actual = checksum(device, on_read=read)
            checks.append(DiskCheck(replica_key=key, expected=expected, actual=actual))
        finally:
            device.close()
    return RestorePointCheck(vm=state.source.name, restore_point=point.id, disks=tuple(checks))
