"""What a full read of a disk reads: CBT's allocated areas, or NBD block status where CBT cannot say.

VDDK's programming guide: on storage other than VMFS, QueryChangedDiskAreas
with changeId="*" can fail, or answer one extent covering the whole disk.
A full read then either fails or copies every byte of a mostly empty disk.
When the source disk is reached through NBD (a VDDK or NBD disk access),
the export's own allocation map (NBD block status, base:allocation) says
which areas may hold data; everything else reads as zeros, which a fresh
replica disk already holds.

The map comes from the snapshot's frozen disk, so it is as fixed as CBT's
answer for that snapshot: an interrupted cycle replans to the same areas.
"""

from __future__ import annotations

from vsphere_replicator.cbt import ALL_ALLOCATED, changed_areas
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import ChangeIdInvalid, TransportError, VSphereFault
from vsphere_replicator.extents import Extent
from vsphere_replicator.inventory import SnapshotInfo, VMInfo, snapshot_disks
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.transport.base import AllocationMap


def allocated_areas(
    conn: Connection, vm: VMInfo, snapshot: SnapshotInfo, disk: int, reader: DiskAccess
) -> tuple[tuple[Extent, ...], int]:
    """The areas of `disk` (a device key) at `snapshot` that a full read copies, and their total.

    CBT's changeId="*" first. When vCenter refuses it (a fault; FileFault,
    which cbt.py reports as ChangeIdInvalid, included), or it covers
    the whole disk in one extent, and `reader` opens a source that has an
    allocation map (`AllocationMap`: NBD, VDDK), that map is used instead.
    Without one, CBT's whole-disk answer stands and its fault is raised.
    """
    log = get_logger(vm=vm.name, disk=disk, operation="allocated_areas")
    fault: VSphereFault | ChangeIdInvalid | None = None
    try:
        changes = changed_areas(conn, vm, snapshot, disk, ALL_ALLOCATED)
    except (VSphereFault, ChangeIdInvalid) as exc:  # FileFault on "*" comes as ChangeIdInvalid
        fault = exc
    else:
        if changes.areas != (Extent(0, changes.capacity),):
            return changes.areas, changes.total
    at = next(d for d in snapshot_disks(conn, snapshot.moref) if d.key == disk)
    source = reader.source(at, vm=vm.moref, snapshot=snapshot.moref)
    try:
        if not isinstance(source, AllocationMap):
            if fault is not None:
                raise fault
            return (Extent(0, at.capacity),), at.capacity
        try:
            areas = source.allocated()
        except TransportError as exc:
            log.warning("block_status_failed", error=str(exc))
            if fault is not None:
                raise fault from exc
            return (Extent(0, at.capacity),), at.capacity
    finally:
        source.close()
    log.info(
        "allocation_from_block_status",
        cbt="fault" if fault is not None else "whole disk",
        areas=len(areas),
        allocated=sum(a.length for a in areas),
        capacity=at.capacity,
    )
    return areas, sum(a.length for a in areas)
