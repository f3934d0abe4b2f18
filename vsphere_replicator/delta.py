"""Read what changed on a VM's disks between two points, from the frozen snapshot data."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from vsphere_replicator.cbt import ALL_ALLOCATED, ChangedAreas, changed_areas
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import (
    DiskInfo,
    SnapshotInfo,
    VMInfo,
    datacenter_path,
    datastore_type,
    snapshot_disks,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.transport.base import DEFAULT_CHUNK, BlockSource, plan_chunks, read_chunks
from vsphere_replicator.transport.http import DatastoreHTTPSource, flat_extent_path, folder_refusal

SourceFactory = Callable[[DiskInfo], BlockSource]
DeltaProgress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class DeltaPlan:
    """Per disk, what changed and where the snapshot's frozen bytes are."""

    vm: str
    snapshot: str
    disks: tuple[DiskInfo, ...]
    changes: tuple[ChangedAreas, ...]

    @property
    def total(self) -> int:
        return sum(c.total for c in self.changes)


def http_sources(conn: Connection, vm: VMInfo) -> SourceFactory:
    """Read each snapshot disk over the datastore HTTP endpoint: flat layers only.

    A snapshot's delta layer (a redo log) or a disk on a vSAN or vVol datastore
    has no flat file: refused before any request, with a message naming VDDK.
    """
    near = vm.folder  # chooses among datacenters holding datastores of the same name

    def source(disk: DiskInfo) -> BlockSource:
        datastore = flat_extent_path(disk.file_name)[0]
        why = folder_refusal(
            disk.file_name, datastore_type=datastore_type(conn, datastore), delta_format=disk.delta_format
        )
        if why is not None:
            raise InvalidInput(why, vm=vm.name)
        datacenter = datacenter_path(conn, datastore, near=near)
        return DatastoreHTTPSource(conn, disk.file_name, disk.capacity, datacenter=datacenter)

    return source


def plan_delta(conn: Connection, vm: VMInfo, snapshot: SnapshotInfo, since: Mapping[int, str]) -> DeltaPlan:
    """The changed areas of every disk of `vm` between `since` (key -> change id or "*") and `snapshot`.

    A disk missing from `since` is read in full ("*"). Raises
    ChangeIdInvalid for a disk whose change id vCenter no longer knows.
    """
    disks = snapshot_disks(conn, snapshot.moref)
    unknown = set(since) - {d.key for d in disks}
    if unknown:
        raise InvalidInput(
            f"{vm.name} has no disk with key {sorted(unknown)} at snapshot {snapshot.name}", vm=vm.name
        )
    changes = tuple(changed_areas(conn, vm, snapshot, d.key, since.get(d.key, ALL_ALLOCATED)) for d in disks)
    return DeltaPlan(vm=vm.name, snapshot=snapshot.moref, disks=disks, changes=changes)


def read_delta(
    plan: DeltaPlan,
    sources: SourceFactory,
    *,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 4,
    on_progress: DeltaProgress | None = None,
) -> Iterator[tuple[int, int, bytes]]:
    """(device key, offset, bytes) for every changed area of every disk, read from the snapshot.

    Reads are 4 KiB-aligned chunks of at most `chunk` bytes with up to
    `workers` in flight; memory stays bounded whatever the disk size.
    `on_progress(bytes_done, bytes_total)` follows along.
    """
    log = get_logger(vm=plan.vm, operation="read_delta")
    plans = {
        d.key: list(plan_chunks(c.areas, d.capacity, chunk=chunk))
        for d, c in zip(plan.disks, plan.changes, strict=True)
    }
    total = sum(c.length for chunks in plans.values() for c in chunks)
    done = 0
    for disk in plan.disks:
        source = sources(disk)
        try:
            for offset, data in read_chunks(source, plans[disk.key], workers=workers):
                done += len(data)
                if on_progress is not None:
                    on_progress(done, total)
                yield disk.key, offset, data
        finally:
            source.close()
    log.info("delta_read", bytes=done, changed=plan.total)
