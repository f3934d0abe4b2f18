"""Replica disk files: which ones a replica still uses, and removing those it no longer does.

A full resync adds a fresh disk to the replica; when the cycle is undone
(a revert to the latest restore point), the disk leaves the configuration
but its files stay on the datastore, referenced by nothing, until someone
deletes them. Every replica disk is ours, so what no configuration (the
VM's or a snapshot's) references is ours to delete.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from pyVmomi import vim

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import NotFound, ReplicatorError
from vsphere_replicator.inventory import (
    SnapshotInfo,
    VMInfo,
    VMSelector,
    get_vm,
    named_objects,
    snapshot_disks,
    vm_object,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.snapshots import remove_snapshot
from vsphere_replicator.tasks import run_task


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


def _datacenter(conn: Connection, vm: VMInfo) -> object:
    name = vm.folder.split("/", 1)[0]
    for obj in named_objects(conn):
        if obj.kind == "Datacenter" and obj.name == name:
            return vim.Datacenter(obj.moref, conn.service_instance._stub)
    raise NotFound(f"datacenter {name} of {vm.name} not found")


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
        handle = vm_object(conn, vm.moref)
        run_task(
            conn,
            lambda: handle.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=changes)),
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
