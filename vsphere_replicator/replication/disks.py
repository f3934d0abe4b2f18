"""Replica disk files: which ones a replica still uses, and removing those it no longer does.

A full resync adds a fresh disk to the replica; when the cycle is undone
(a revert to the latest restore point), the disk leaves the configuration
but its files stay on the datastore, referenced by nothing, until someone
deletes them. Every replica disk is ours, so what no configuration (the
VM's or a snapshot's) references is ours to delete.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from pyVmomi import vim

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import NotFound, ReplicatorError, StateError
from vsphere_replicator.inventory import (
    DiskInfo,
    SnapshotInfo,
    VMInfo,
    VMSelector,
    get_vm,
    named_objects,
    snapshot_disks,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication import failpoints
from vsphere_replicator.snapshots import remove_snapshot
from vsphere_replicator.tasks import reconfigure_vm, run_task


def referenced_files(conn: Connection, vm: VMInfo) -> set[str]:
    """Every disk layer the VM's configuration or any of its snapshots names."""
    files: set[str] = set()
    layers = [*vm.disks]
    for snap in vm.all_snapshots():
        layers.extend(snapshot_disks(conn, snap.moref))
    for disk in layers:
        files.add(disk.file_name)
        if disk.parent_file:
            files.add(disk.parent_file)
    return files


def _datacenter(conn: Connection, vm: VMInfo) -> vim.Datacenter:
    """The VM's datacenter: the one whose inventory path ("Sites/DC0") its folder path starts with."""
    for obj in named_objects(conn):
        if obj.kind == "Datacenter" and vm.folder.startswith(obj.path + "/"):
            return conn.handle(vim.Datacenter, obj.moref)
    raise NotFound(f"the datacenter of {vm.name} (in {vm.folder}) not found")


def remove_unreferenced_disks(
    conn: Connection, vm: VMInfo, candidates: Iterable[str], *, detach: bool = False
) -> list[str]:
    """Delete the `candidates` (disk descriptors) nothing references; returns those deleted.

    With `detach`, candidates still attached to the VM (and in no snapshot)
    are detached and destroyed in one reconfigure first.
    """
    log = get_logger(vm=vm.name, operation="remove_disks")
    wanted = [c for c in dict.fromkeys(candidates) if c]
    if not wanted:
        return []
    attached = {d.file_name: d for d in vm.disks}
    in_snapshots = referenced_files(conn, vm) - {f for f in wanted if f in attached}
    removed: list[str] = []
    destroy = [attached[f] for f in wanted if f in attached and f not in in_snapshots]
    if detach and destroy:
        changes = [
            vim.vm.device.VirtualDeviceSpec(
                operation="remove",
                fileOperation="destroy",
                device=vim.vm.device.VirtualDisk(
                    key=d.key,
                    controllerKey=d.controller_key,
                    unitNumber=d.unit_number,
                    capacityInBytes=d.capacity,
                ),
            )
            for d in destroy
        ]
        reconfigure_vm(
            conn,
            vm.moref,
            vim.vm.ConfigSpec(deviceChange=changes),
            what=f"remove the disks a failed resync added to {vm.name}",
            vm=vm.name,
        )
        removed.extend(d.file_name for d in destroy)
    loose = [f for f in wanted if f not in attached and f not in in_snapshots]
    if loose:
        datacenter = _datacenter(conn, vm)
        manager = conn.content.virtualDiskManager
        for name in loose:
            try:
                run_task(
                    conn,
                    functools.partial(manager.DeleteVirtualDisk_Task, name=name, datacenter=datacenter),
                    what=f"delete the unused disk {name}",
                    vm=vm.name,
                    expected_faults=("FileNotFound", "NotFound"),
                )
            except NotFound:
                continue  # already gone (a revert deletes the redo logs it discards)
            except ReplicatorError as exc:
                if exc.fault not in ("FileNotFound", "NotFound"):
                    raise
                continue
            removed.append(name)
    for name in removed:
        log.warning("unused_disk_removed", file=name)
    return removed


def remove_point_snapshot(conn: Connection, vm: VMInfo, snapshot: SnapshotInfo) -> VMInfo:
    """Remove a restore-point snapshot and any disk file that only it still referenced.

    A disk a full resync retired is detached from the replica but kept for
    the restore points that hold it; once the last of them goes, its files
    would stay on the datastore for good.
    """
    held = [d.file_name for d in snapshot_disks(conn, snapshot.moref)]
    held += [d.parent_file for d in snapshot_disks(conn, snapshot.moref) if d.parent_file]
    vm = remove_snapshot(conn, vm, snapshot)
    if remove_unreferenced_disks(conn, vm, held):
        vm = get_vm(conn, VMSelector(moref=vm.moref))
    return vm


def disk_identity(disk: DiskInfo) -> str:
    """What tells a disk apart for good: its backing UUID, else its file (device keys are reused)."""
    return disk.uuid or disk.file_name


def find_disk(vm: VMInfo, key: int, uuid: str | None) -> DiskInfo | None:
    """The VM's disk with backing `uuid` (by `key` only when no UUID was recorded)."""
    if uuid:
        return next((d for d in vm.disks if d.uuid == uuid), None)
    return next((d for d in vm.disks if d.key == key), None)


def replica_disk(vm: VMInfo, key: int, uuid: str | None = None) -> DiskInfo:
    """The replica's disk recorded as `key`/`uuid`; StateError when it is gone."""
    found = find_disk(vm, key, uuid)
    if found is None:
        which = f"backing UUID {uuid}" if uuid else f"key {key}"
        raise StateError(f"replica {vm.name} has no disk with {which}", vm=vm.name)
    return found


def reshape_replica(
    conn: Connection,
    vm: VMInfo,
    fresh: Sequence[DiskInfo],
    retiring: Sequence[tuple[int, str | None]],
    datastore: str,
) -> dict[int, DiskInfo]:
    """Add an empty disk for each source disk in `fresh` and detach the `retiring` ones (key, uuid).

    Returns the new disks by source disk key. New disks are told apart by
    identity, never by device key: vCenter hands a detached disk's key to
    the next one added. A detached disk's newest layer (written after its
    last restore point) is deleted; its older layers stay with the restore
    points that hold them. A reshape that does not give what was asked
    removes what it made.
    """
    before = {disk_identity(d) for d in vm.disks}
    changes = []
    gone: set[str] = set()
    for key, uuid in retiring:
        current = find_disk(vm, key, uuid)
        if current is not None:
            gone.add(disk_identity(current))
            device = vim.vm.device.VirtualDisk(
                key=current.key,
                controllerKey=current.controller_key,
                unitNumber=current.unit_number,
                capacityInBytes=current.capacity,
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="remove", device=device))
    controller = vm.disks[0].controller_key if vm.disks else 1000
    used = {
        d.unit_number for d in vm.disks if d.controller_key == controller and disk_identity(d) not in gone
    }
    free_units = (u for u in range(16) if u != 7 and u not in used)
    for index, disk in enumerate(fresh):
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
        )
        device = vim.vm.device.VirtualDisk(
            key=-(index + 1),
            controllerKey=controller,
            unitNumber=next(free_units),
            backing=backing,
            capacityInBytes=disk.capacity,
            capacityInKB=disk.capacity // 1024,
        )
        changes.append(
            vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=device)
        )
    reconfigure_vm(
        conn,
        vm.moref,
        vim.vm.ConfigSpec(deviceChange=changes),
        what=f"prepare the disks of {vm.name} for a full resync",
        vm=vm.name,
    )
    failpoints.point("replica-disks-reshaped")
    after = get_vm(conn, VMSelector(moref=vm.moref))
    remove_unreferenced_disks(conn, after, [d.file_name for d in vm.disks if disk_identity(d) in gone])
    new = [d for d in after.disks if disk_identity(d) not in before]
    if len(new) != len(fresh):
        remove_unreferenced_disks(conn, after, [d.file_name for d in new], detach=True)
        raise StateError(
            f"{vm.name} got {len(new)} new disks where {len(fresh)} were asked for; "
            "the ones it got were removed",
            vm=vm.name,
        )
    by_unit = sorted(new, key=lambda d: (d.controller_key, d.unit_number or 0))  # as asked: in unit order
    return {disk.key: d for disk, d in zip(fresh, by_unit, strict=True)}
