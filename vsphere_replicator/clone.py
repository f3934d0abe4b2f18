"""Clone a VM from a snapshot to a secondary datastore: the replica's seed.

Cloning from a snapshot leaves the running VM untouched; the copy lands
powered off on the placement asked for, and a target without room for the
disks is refused before vCenter is asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pyVmomi import vim

from vsphere_replicator.checks import check_choice
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.inventory import (
    PROVISIONING,
    NamedObject,
    Provisioning,
    SnapshotInfo,
    VMInfo,
    VMRef,
    VMSelector,
    find_vms,
    get_vm,
    named_objects,
    resolve_vm,
    snapshot_disks,
    vm_object,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.snapshots import find_snapshot
from vsphere_replicator.tasks import ProgressCallback, run_task


@dataclass(frozen=True, slots=True)
class DiskPlacement:
    """Where one disk (by device key) of the clone goes, and how it is provisioned."""

    disk: int
    datastore: str | None = None
    provisioning: Provisioning | None = None

    def __post_init__(self) -> None:
        if self.provisioning is not None:
            check_choice(self.provisioning, PROVISIONING, "provisioning")


@dataclass(frozen=True, slots=True)
class ClonePlacement:
    """The clone's home: datastore, and optionally host, resource pool, folder path, per-disk choices."""

    datastore: str
    host: str | None = None
    resource_pool: str | None = None
    folder: str | None = None
    provisioning: Provisioning | None = None
    disks: tuple[DiskPlacement, ...] = ()

    def __post_init__(self) -> None:
        if self.provisioning is not None:
            check_choice(self.provisioning, PROVISIONING, "provisioning")


def clone_name(template: str, vm: VMInfo, now: datetime | None = None) -> str:
    """Expand a name template: {vm} (source name), {date} (YYYYMMDD), {time} (HHMMSS, UTC)."""
    moment = now or datetime.now(UTC)
    try:
        name = template.format(vm=vm.name, date=moment.strftime("%Y%m%d"), time=moment.strftime("%H%M%S"))
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidInput(
            f"bad clone name template {template!r}: use {{vm}}, {{date}} and {{time}}"
        ) from exc
    if not name or len(name) > 80 or "/" in name:
        raise InvalidInput(f"clone name {name!r} must be 1 to 80 characters without '/'")
    return name


def _one(objects: Sequence[NamedObject], kind: str, name: str) -> NamedObject:
    hits = [o for o in objects if o.kind == kind and (o.name == name or o.path == name.strip("/"))]
    if not hits:
        raise NotFound(f"no {kind} named {name!r}")
    if len(hits) > 1:
        raise InvalidInput(f"{len(hits)} objects of type {kind} are named {name!r}; give the path")
    return hits[0]


def _backing(provisioning: Provisioning) -> vim.vm.device.VirtualDisk.FlatVer2BackingInfo:
    return vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName="",
        diskMode="persistent",
        thinProvisioned=provisioning == "thin",
        eagerlyScrub=provisioning == "thick-eager",
    )


def check_placement(conn: Connection, placement: ClonePlacement) -> None:
    """Raise NotFound / InvalidInput for a placement whose datastore, host, pool or folder is not there."""
    objects = named_objects(conn)
    _one(objects, "Datastore", placement.datastore)
    for disk in placement.disks:
        if disk.datastore:
            _one(objects, "Datastore", disk.datastore)
    if placement.host:
        _one(objects, "HostSystem", placement.host)
    if placement.resource_pool:
        _one(objects, "ResourcePool", placement.resource_pool)
    if placement.folder:
        _one(objects, "Folder", placement.folder)


def clone_vm(
    conn: Connection,
    vm: VMRef,
    name: str,
    placement: ClonePlacement,
    *,
    snapshot: SnapshotInfo | None = None,
    options: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
    linked: bool = False,
) -> VMInfo:
    """Clone `vm` (from `snapshot`, so the running VM is untouched) as `name`, powered off.

    `linked` makes a linked clone (diskMoveType createNewChildDiskBacking):
    its disks are new redo logs over the snapshot's, so it costs seconds and
    the space it writes, whatever the disks' size; it needs `snapshot`, and
    the snapshot's disks stay while the clone lives.

    `name` may be a template ({vm}, {date}, {time}). Raises InvalidInput when
    the name is taken or a datastore lacks free space for thick disks (thin
    disks need what the source holds, which vCenter checks itself), NotFound
    for an unknown placement; nothing is created then. `options` are
    extraConfig entries set on the clone as it is created (an empty value
    removes one the source carried).
    """
    info = resolve_vm(conn, vm)
    if linked and snapshot is None:
        raise InvalidInput("a linked clone is made from a snapshot: give snapshot")
    target = clone_name(name, info)
    if find_vms(conn, VMSelector(name=target)):
        raise InvalidInput(f"a VM named {target!r} already exists")
    disks = snapshot_disks(conn, snapshot.moref) if snapshot is not None else info.disks
    if snapshot is not None:
        find_snapshot(info, moref=snapshot.moref)
    objects = named_objects(conn)
    home = _one(objects, "Datastore", placement.datastore)
    keys = {d.key for d in disks}
    stray = [p.disk for p in placement.disks if p.disk not in keys]
    if stray:
        raise InvalidInput(f"{info.name} has no disk with key {stray}")
    need: dict[str, int] = {}
    locators = []
    for disk in () if linked else disks:  # a linked clone's disks are redo logs: nothing to place
        chosen = next((p for p in placement.disks if p.disk == disk.key), DiskPlacement(disk.key))
        store = _one(objects, "Datastore", chosen.datastore) if chosen.datastore else home
        provisioning = chosen.provisioning or placement.provisioning or disk.provisioning
        if provisioning != "thin":
            need[store.name] = need.get(store.name, 0) + disk.capacity
        locators.append(
            vim.vm.RelocateSpec.DiskLocator(
                diskId=disk.key,
                datastore=conn.handle(vim.Datastore, store.moref),
                diskBackingInfo=_backing(provisioning),
            )
        )
    for store_name, bytes_needed in need.items():
        free = _one(objects, "Datastore", store_name).free_space
        if free is not None and bytes_needed > free:
            raise InvalidInput(
                f"{store_name} has {free} bytes free; thick disks of {info.name} need {bytes_needed}"
            )
    location = vim.vm.RelocateSpec(datastore=conn.handle(vim.Datastore, home.moref), disk=locators)
    if linked:  # the child redo logs go beside the clone's home; the parents stay where they are
        location.diskMoveType = "createNewChildDiskBacking"
    if placement.host:
        location.host = conn.handle(vim.HostSystem, _one(objects, "HostSystem", placement.host).moref)
    if placement.resource_pool:
        location.pool = conn.handle(
            vim.ResourcePool, _one(objects, "ResourcePool", placement.resource_pool).moref
        )
    folder_path = placement.folder or info.folder
    folder = conn.handle(vim.Folder, _one(objects, "Folder", folder_path).moref)
    spec = vim.vm.CloneSpec(location=location, powerOn=False, template=False)
    if options:
        spec.config = vim.vm.ConfigSpec(
            extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in options.items()]
        )
    if snapshot is not None:
        spec.snapshot = conn.handle(vim.vm.Snapshot, snapshot.moref)
    handle = vm_object(conn, info.moref)
    get_logger(vm=info.name, operation="clone").info("clone_started", target=target, datastore=home.name)
    result = run_task(
        conn,
        lambda: handle.CloneVM_Task(folder=folder, name=target, spec=spec),
        what=f"clone {info.name} to {target}",
        vm=info.name,
        on_progress=on_progress,
        returns=vim.VirtualMachine,
    )
    return get_vm(conn, VMSelector(moref=result._moId))


def destroy_vm(conn: Connection, vm: VMRef) -> None:
    """Power the VM off if it runs, then delete it and its files."""
    info = resolve_vm(conn, vm)
    handle = vm_object(conn, info.moref)
    if info.power_state == "poweredOn":
        run_task(conn, handle.PowerOffVM_Task, what=f"power off {info.name}", vm=info.name)
    run_task(conn, handle.Destroy_Task, what=f"destroy {info.name}", vm=info.name)
    get_logger(vm=info.name, operation="destroy").info("vm_destroyed")
