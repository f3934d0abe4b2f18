"""Seeding a replica on another vCenter: an empty VM like the source, its disks filled through the data path.

The replica VM is created on the target site carrying the seed record (so
a protect run again finds it) and a copy-pending mark; its disks are added
empty, then each gets the allocated areas of the seed snapshot's disk
(CBT's changeId="*", or the transport's allocation map), read on the
source site and written on the target site through the given transports.
The mark goes only once every byte is there: a protect interrupted before
copies again from the seed snapshot, which stays until the seed commits.
"""

from __future__ import annotations

from collections.abc import Callable

from vsphere_replicator.cbt import enable_cbt
from vsphere_replicator.clone import clone_name
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.extents import Extent
from vsphere_replicator.inventory import DiskInfo, SnapshotInfo, VMInfo, VMSelector, get_vm, snapshot_disks
from vsphere_replicator.logs import get_logger
from vsphere_replicator.networks import check_networks
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.replication.allocation import allocated_areas
from vsphere_replicator.replication.disks import reshape_replica
from vsphere_replicator.replication.lease import Lease
from vsphere_replicator.replication.options import PREFIX, read_options
from vsphere_replicator.replication.settings import ReplicaTarget
from vsphere_replicator.replication.sites import Sites
from vsphere_replicator.replication.state import SeedRecord
from vsphere_replicator.replication.store import seed_options, write_options
from vsphere_replicator.shells import Hardware, create_vm, vm_hardware
from vsphere_replicator.tasks import ProgressCallback
from vsphere_replicator.transport.base import copy_areas

COPY_PENDING_KEY = PREFIX + "seed_copy_pending"  # on a replica created empty: its disks are not filled yet


def by_position(disks: tuple[DiskInfo, ...]) -> list[DiskInfo]:
    """Disks in the order their controllers and units give: how a source's and a replica's pair up."""
    return sorted(disks, key=lambda d: (d.controller_key, d.unit_number or 0, d.key))


def check_cross_site(
    sites: Sites, source: VMInfo, target: ReplicaTarget, writer: DiskAccess | None
) -> Hardware:
    """Refuse, before anything changes, a seed into another vCenter that could not finish."""
    if writer is None:
        raise InvalidInput(
            f"protecting {source.name} into another vCenter copies its disks through the data path: "
            "give replica_access (--transport vddk, or the target site's datastores mounted)",
            vm=source.name,
        )
    hardware = vm_hardware(sites.source, source)
    mapped = dict(target.networks)
    check_networks(sites.source, mapped, what="--network / networks (source side)")
    needed = sorted({mapped.get(n, n) for n in hardware.networks})
    check_networks(
        sites.target,
        needed,
        what=f"the recovery site's port groups for {source.name}'s NICs (map others with --network SRC=DST)",
    )
    return hardware


def copy_pending(sites: Sites, replica: VMInfo) -> bool:
    return bool(read_options(sites.target, replica.moref).values.get(COPY_PENDING_KEY))


def create_replica(
    sites: Sites,
    source: VMInfo,
    target: ReplicaTarget,
    snapshot: SnapshotInfo,
    record: SeedRecord,
    hardware: Hardware,
    *,
    name: str | None = None,
) -> VMInfo:
    """The empty replica on the target site, marked as a seed whose copy is pending, with its disks.

    Named `name`, or by the target's name template for `source`.
    """
    options = {**seed_options(record), COPY_PENDING_KEY: record.cycle}  # a new VM has nothing to clear
    shell = create_vm(
        sites.target,
        name or clone_name(target.name, source),
        target.datastore,
        hardware,
        networks=dict(target.networks),
        options=options,
    )
    failpoints.point("seed-shell-made")
    frozen = by_position(snapshot_disks(sites.source, snapshot.moref))
    return _with_disks(sites, shell, frozen, target.datastore)


def _with_disks(sites: Sites, replica: VMInfo, frozen: list[DiskInfo], datastore: str) -> VMInfo:
    """The replica with a disk for each of the seed snapshot's `frozen` disks (by position), CBT on.

    Tracking starts before its first restore point, as on a replica cloned
    from its (tracked) source: once it is failed over to, its own writes are
    what a failback copies back, and only CBT can say which they are.
    """
    missing = frozen[len(replica.disks) :]  # a run interrupted while adding them added a prefix or none
    if missing:
        reshape_replica(sites.target, replica, missing, [], datastore)
    replica = get_vm(sites.target, VMSelector(moref=replica.moref))
    if not replica.snapshots and (not replica.cbt_enabled or any(d.change_id is None for d in replica.disks)):
        replica = enable_cbt(sites.target, replica)
    return replica


def fill_replica(
    sites: Sites,
    lease: Lease,
    source: VMInfo,
    snapshot: SnapshotInfo,
    replica: VMInfo,
    reader: DiskAccess,
    writer: DiskAccess,
    datastore: str,
    on_progress: ProgressCallback | None = None,
) -> VMInfo:
    """Copy the seed snapshot's allocated areas into the replica's disks, then clear the mark."""
    frozen = by_position(snapshot_disks(sites.source, snapshot.moref))
    replica = _with_disks(sites, replica, frozen, datastore)
    pairs = list(zip(frozen, by_position(replica.disks), strict=True))
    plans = [
        (ours, theirs, allocated_areas(sites.source, source, snapshot, ours.key, reader))
        for ours, theirs in pairs
    ]
    total = sum(planned for _, _, (_, planned) in plans) or 1
    done = 0
    log = get_logger(vm=source.name, replica=replica.name, operation="protect")
    for ours, theirs, (areas, planned) in plans:
        log.info("seed_disk_copy", disk=ours.key, bytes=planned)
        _copy(
            reader, writer, source, snapshot, replica, ours, theirs, areas, _percent(on_progress, done, total)
        )
        done += planned
    failpoints.point("seed-copied")
    write_options(lease, extra={COPY_PENDING_KEY: ""})
    return replica


def _percent(
    on_progress: ProgressCallback | None, before: int, total: int
) -> Callable[[int, int], None] | None:
    """A copy's (done, total) of one disk as the whole seed's percentage, as a clone task reports it."""
    if on_progress is None:
        return None

    def report(done: int, _disk_total: int) -> None:
        on_progress(min(100, (before + done) * 100 // total))

    return report


def _copy(
    reader: DiskAccess,
    writer: DiskAccess,
    source: VMInfo,
    snapshot: SnapshotInfo,
    replica: VMInfo,
    ours: DiskInfo,
    theirs: DiskInfo,
    areas: tuple[Extent, ...],
    on_progress: Callable[[int, int], None] | None,
) -> None:
    src = reader.source(ours, vm=source.moref, snapshot=snapshot.moref)
    try:
        dst = writer.sink(theirs, vm=replica.moref)
    except BaseException:
        src.close()
        raise
    try:
        copy_areas(src, dst, areas, skip_zero=True, on_progress=on_progress)  # a new thin disk reads zeros
    finally:
        src.close()
        dst.close()
