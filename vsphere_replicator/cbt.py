"""Changed Block Tracking: switch it on, read change ids, ask what changed.

A disk's change id is read from a snapshot's own copy of the device list.
`changed_areas` loops QueryChangedDiskAreas over the whole disk (one answer
covers only part of it), checks every answer, and turns a stale or unknown
change id into ChangeIdInvalid — never into an empty delta.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pyVmomi import vim

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import CBTError, ChangeIdInvalid, InvalidInput, VSphereFault
from vsphere_replicator.extents import Extent, merge_extents
from vsphere_replicator.inventory import (
    DiskInfo,
    SnapshotInfo,
    VMInfo,
    VMRef,
    VMSelector,
    get_vm,
    resolve_vm,
    snapshot_disks,
    vm_object,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.snapshots import create_snapshot, remove_snapshot
from vsphere_replicator.tasks import reconfigure_vm

ALL_ALLOCATED = "*"


# The name this module has always exported for a changed area: it is the one extent type.
ChangedArea = Extent


@dataclass(frozen=True, slots=True)
class ChangedAreas:
    """What changed on one disk between `since` and the snapshot, merged and checked."""

    vm: str
    disk: int
    snapshot: str
    since: str
    capacity: int
    areas: tuple[Extent, ...]
    queries: int

    @property
    def total(self) -> int:
        return sum(a.length for a in self.areas)


def change_id_uuid(change_id: str) -> str:
    """The tracking identity part of a change id: everything before the '/'."""
    uuid, slash, seq = change_id.rpartition("/")
    if not slash or not uuid or not seq.isdigit():
        raise InvalidInput(f"not a change id: {change_id!r}")
    return uuid


def enable_cbt(conn: Connection, vm: VMRef) -> VMInfo:
    """Switch CBT on and make it take effect; returns the VM with change ids on every disk.

    Refuses a VM that has snapshots (unsupported by VMware). A powered-on VM
    needs a stun before tracking starts: a marked snapshot is taken and
    removed for that.
    """
    info = resolve_vm(conn, vm)
    if info.snapshots:
        raise CBTError(
            f"{info.name} has snapshots: VMware does not support enabling CBT then; remove them first",
            vm=info.name,
        )
    log = get_logger(vm=info.name, operation="enable_cbt")
    if not info.cbt_enabled:
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
        reconfigure_vm(conn, info.moref, spec, what=f"enable CBT on {info.name}", vm=info.name)
        log.info("cbt_enabled")
    fresh = get_vm(conn, VMSelector(moref=info.moref))
    if any(d.change_id is None for d in fresh.disks):
        stun = create_snapshot(conn, fresh, "cbt-stun", description="starts Changed Block Tracking").snapshot
        fresh = remove_snapshot(conn, fresh, stun)
    untracked = [d.label for d in fresh.disks if d.change_id is None]
    if untracked:
        raise CBTError(f"CBT did not start on {info.name}: {', '.join(untracked)}", vm=info.name)
    return fresh


def disable_cbt(conn: Connection, vm: VMRef) -> VMInfo:
    info = resolve_vm(conn, vm)
    spec = vim.vm.ConfigSpec(changeTrackingEnabled=False)
    reconfigure_vm(conn, info.moref, spec, what=f"disable CBT on {info.name}", vm=info.name)
    return get_vm(conn, VMSelector(moref=info.moref))


def tracked_disks(vm: VMInfo) -> dict[int, bool]:
    """Per device key: is tracking active (the disk carries a change id)?"""
    return {d.key: d.change_id is not None for d in vm.disks}


def change_ids_at(conn: Connection, snapshot: SnapshotInfo) -> dict[int, str | None]:
    """Each disk's change id as the snapshot froze it (None where not tracked)."""
    return {d.key: d.change_id for d in snapshot_disks(conn, snapshot.moref)}


def _disk_at(conn: Connection, snapshot: SnapshotInfo, disk: int) -> DiskInfo:
    for d in snapshot_disks(conn, snapshot.moref):
        if d.key == disk:
            return d
    raise InvalidInput(f"snapshot {snapshot.name} has no disk with key {disk}")


def changed_areas(
    conn: Connection,
    vm: VMInfo,
    snapshot: SnapshotInfo,
    disk: int | DiskInfo,
    since: str,
    *,
    start: int = 0,
    max_queries: int | None = None,
) -> ChangedAreas:
    """The areas of `disk` written between change id `since` (or "*": all allocated) and `snapshot`.

    Raises ChangeIdInvalid when vCenter no longer knows `since`, or its
    tracking identity differs from the disk's at the snapshot: the caller
    must then read the disk in full. Raises CBTError when vCenter's answers
    are inconsistent (unsorted, overlapping, outside the disk, empty).
    `start` and `max_queries` limit the answer to the windows from `start`
    that many queries cover (a sample, not the whole disk). `disk` is a
    device key, or the disk as `snapshot_disks(snapshot)` read it.
    """
    # A disk given as the snapshot's own DiskInfo (what snapshot_disks read) spares the read.
    at = disk if isinstance(disk, DiskInfo) else _disk_at(conn, snapshot, disk)
    disk = at.key
    log = get_logger(vm=vm.name, disk=disk, operation="changed_areas")
    if at.change_id is None:
        raise CBTError(f"{vm.name} disk {disk} was not tracked when {snapshot.name} was taken", vm=vm.name)
    if since != ALL_ALLOCATED and change_id_uuid(since) != change_id_uuid(at.change_id):
        log.warning("change_id_reset", since=since, now=at.change_id)
        raise ChangeIdInvalid(
            f"{vm.name} disk {disk}: change id {since} belongs to an earlier tracking identity "
            f"(now {at.change_id}); read the disk in full",
            vm=vm.name,
            disk=disk,
            change_id=since,
            reason="tracking identity changed",
        )
    handle = vm_object(conn, vm.moref)
    snap = conn.handle(vim.vm.Snapshot, snapshot.moref)
    capacity, offset, queries = at.capacity, start, 0
    if not 0 <= start < capacity:
        raise InvalidInput(f"start {start} is outside disk {disk} ({capacity} bytes)")
    found: list[Extent] = []
    # Never ask at offset == capacity: ESXi answers InvalidArgument.
    while offset < capacity and (max_queries is None or queries < max_queries):
        query = functools.partial(
            handle.QueryChangedDiskAreas, snapshot=snap, deviceKey=disk, startOffset=offset, changeId=since
        )
        try:
            info = conn.call(f"query changed areas of {vm.name} disk {disk}", query, vm=vm.name)
        except VSphereFault as exc:  # ArgumentRejected included: vCenter's InvalidArgument
            stale = exc.fault == "FileFault" or (exc.fault == "InvalidArgument" and "changeId" in str(exc))
            if not stale:
                raise
            log.warning("change_id_invalid", since=since, fault=exc.fault)
            raise ChangeIdInvalid(
                f"{vm.name} disk {disk}: vCenter rejects change id {since} ({exc.fault}); read it in full",
                vm=vm.name,
                disk=disk,
                change_id=since,
                reason=str(exc),
                fault=exc.fault,
            ) from exc
        queries += 1
        window_end = int(info.startOffset) + int(info.length)
        if info.startOffset != offset or info.length <= 0:
            window = f"{info.startOffset}+{info.length}"
            raise CBTError(f"{vm.name} disk {disk}: vCenter answered window {window} for offset {offset}")
        previous_end = found[-1].end if found else 0
        for extent in info.changedArea or []:
            first, length = int(extent.start), int(extent.length)
            if (
                length <= 0
                or first < max(previous_end, info.startOffset)
                or first + length > min(window_end, capacity)
            ):
                where = f"{first}+{length}"
                raise CBTError(
                    f"{vm.name} disk {disk}: changed area {where} is out of order or outside the disk"
                )
            found.append(Extent(first, length))
            previous_end = first + length
        offset = window_end
    result = ChangedAreas(
        vm=vm.name,
        disk=disk,
        snapshot=snapshot.moref,
        since=since,
        capacity=capacity,
        areas=merge_extents(found),
        queries=queries,
    )
    log.info("changed_areas", since=since, areas=len(result.areas), bytes=result.total, queries=queries)
    return result


__all__ = [
    "ALL_ALLOCATED",
    "ChangedArea",
    "ChangedAreas",
    "change_id_uuid",
    "change_ids_at",
    "changed_areas",
    "disable_cbt",
    "enable_cbt",
    "tracked_disks",
]
