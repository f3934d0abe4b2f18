"""Read the inventory through the PropertyCollector into plain dataclasses.

One container view over the root folder, only the properties needed, paged
with ContinueRetrievePropertiesEx: the number of round trips does not grow
with the number of VMs beyond paging. Nothing here returns pyVmomi objects.
"""

from __future__ import annotations

import fnmatch
import functools
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from pyVmomi import vim, vmodl
from pyVmomi.VmomiSupport import ManagedObject

from vsphere_replicator.checks import check_type, shown
from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound, VSphereFault

PAGE_SIZE = 1000
# vSphere's VirtualMachinePowerState, of a VM and of the VM a snapshot froze.
PowerState = Literal["poweredOn", "poweredOff", "suspended"]
POWER_STATES: tuple[PowerState, ...] = get_args(PowerState)
# How a disk's blocks are allocated: clones and replicas choose one of these.
Provisioning = Literal["thin", "thick-lazy", "thick-eager"]
PROVISIONING: tuple[Provisioning, ...] = get_args(Provisioning)
_VM_DETAIL = [
    "name",
    "config.instanceUuid",
    "config.template",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "runtime.powerState",
    "runtime.host",
    "runtime.consolidationNeeded",
    "resourcePool",
    "parent",
    "datastore",
    "snapshot",
]
_VM_BRIEF = ["name", "config.instanceUuid", "parent"]
_NAMED_TYPES = [
    vim.Folder,
    vim.Datacenter,
    vim.HostSystem,
    vim.ResourcePool,
    vim.Datastore,
    vim.ClusterComputeResource,
    vim.StoragePod,  # a datastore cluster: a datastore's parent on the way to its datacenter
]


@dataclass(frozen=True, slots=True)
class DiskInfo(Shown):
    """One virtual disk as the VM (or a snapshot) sees it. Sizes in bytes."""

    key: int
    label: str
    controller_key: int
    unit_number: int | None
    capacity: int
    file_name: str
    datastore: str
    thin: bool | None
    eager_scrub: bool | None
    change_id: str | None
    uuid: str | None
    parent_file: str | None
    # Every layer under file_name, nearest first (parent_file is the first): the backing chain.
    parents: tuple[str, ...] = ()
    # The backing's deltaDiskFormat: "redoLogFormat" (vmfsSparse), "seSparseFormat" or "nativeFormat"
    # on a snapshot's delta layer, None on a flat base disk. A delta has no `-flat.vmdk` extent.
    delta_format: str | None = None

    _shown_title = "label"
    _shown_columns = ("key", "label", "capacity", "datastore", "provisioning", "change_id", "file_name")

    @property
    def layers(self) -> tuple[str, ...]:
        """The disk's backing chain, this layer first and the base disk last."""
        return (self.file_name, *self.parents)

    @property
    def provisioning(self) -> Provisioning:
        if self.thin:
            return "thin"
        return "thick-eager" if self.eager_scrub else "thick-lazy"


@dataclass(frozen=True, slots=True)
class SnapshotInfo(Shown):
    """A node of the snapshot tree; `children` in creation order."""

    moref: str
    id: int
    name: str
    description: str
    created: datetime
    state: PowerState
    quiesced: bool
    children: tuple[SnapshotInfo, ...] = ()

    _shown_columns = ("name", "id", "created", "state", "quiesced", "children")

    def walk(self) -> Iterator[SnapshotInfo]:
        """This snapshot and its descendants, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True, slots=True)
class VMInfo(Shown):
    """A VM's full picture, read in one go."""

    moref: str
    name: str
    instance_uuid: str | None
    power_state: PowerState
    template: bool
    host: str | None
    resource_pool: str | None
    folder: str
    datastores: tuple[str, ...]
    disks: tuple[DiskInfo, ...]
    snapshots: tuple[SnapshotInfo, ...]
    current_snapshot: str | None
    consolidation_needed: bool
    cbt_enabled: bool

    @property
    def path(self) -> str:
        """Inventory path, e.g. 'DC0/vm/prod/web-01'."""
        return f"{self.folder}/{self.name}"

    def all_snapshots(self) -> Iterator[SnapshotInfo]:
        for root in self.snapshots:
            yield from root.walk()


@dataclass(frozen=True, slots=True)
class VMSelector:
    """Which VMs to find. Fields given are all required to match."""

    name: str | None = None
    glob: str | None = None
    moref: str | None = None
    instance_uuid: str | None = None
    folder: str | None = None

    def __post_init__(self) -> None:
        for field in self.__slots__:
            check_type(getattr(self, field), str, f"a VM selector's {field}", optional=True)
        if not any((self.name, self.glob, self.moref, self.instance_uuid, self.folder)):
            raise InvalidInput("a VM selector needs a name, glob, moref, instance_uuid or folder")

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k in self.__slots__ if (v := getattr(self, k)))

    def matches(self, name: str, moref: str, uuid: str | None, folder: str) -> bool:
        return (
            (self.name is None or name == self.name)
            and (self.glob is None or fnmatch.fnmatchcase(name, self.glob))
            and (self.moref is None or moref == self.moref)
            and (self.instance_uuid is None or (uuid or "").lower() == self.instance_uuid.lower())
            and (
                self.folder is None
                or folder == self.folder.strip("/")
                or folder.startswith(self.folder.strip("/") + "/")
            )
        )


# -- PropertyCollector plumbing ------------------------------------------------


def _retrieve(conn: Connection, specs: Sequence[Any]) -> list[Any]:
    """All ObjectContent for `specs`, following the paging token."""
    pc = conn.content.propertyCollector
    options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=PAGE_SIZE)
    result = conn.call("read the inventory", lambda: pc.RetrievePropertiesEx(list(specs), options))
    objects: list[Any] = []
    while result is not None:
        objects.extend(result.objects)
        token = result.token
        if not token:
            break
        result = conn.call("read the inventory", functools.partial(pc.ContinueRetrievePropertiesEx, token))
    return objects


def _view_spec(
    view: vim.view.ContainerView, types: Sequence[tuple[type[ManagedObject], list[str]]]
) -> vmodl.query.PropertyCollector.FilterSpec:
    traversal = vmodl.query.PropertyCollector.TraversalSpec(
        name="view", path="view", skip=False, type=vim.view.ContainerView
    )
    return vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=t, pathSet=paths) for t, paths in types],
    )


class _View:
    """A container view over the whole inventory, destroyed on exit."""

    def __init__(self, conn: Connection, types: Sequence[Any]) -> None:
        self._conn = conn
        content = conn.content
        self.view = conn.call(
            "read the inventory",
            lambda: content.viewManager.CreateContainerView(content.rootFolder, list(types), True),
        )

    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.call("read the inventory", self.view.DestroyView)


def _props(obj: Any) -> dict[str, Any]:
    return {p.name: p.val for p in obj.propSet}


def view_contents(conn: Connection, kinds: Sequence[tuple[type[ManagedObject], list[str]]]) -> list[Any]:
    """Every object of these kinds in the inventory, with the named properties (paged ObjectContent).

    One container view, read in pages and destroyed: the way to read a
    property of every VM, network, ... without one call per object.
    """
    with _View(conn, [kind for kind, _ in kinds]) as v:
        return _retrieve(conn, [_view_spec(v.view, kinds)])


class _Names:
    """moref -> name and parent, to turn references into names and folder paths."""

    def __init__(self) -> None:
        self.name: dict[str, str] = {}
        self.parent: dict[str, str | None] = {}
        self.kind: dict[str, str] = {}

    def add(self, obj: Any) -> None:
        props = _props(obj)
        moref = obj.obj._moId
        self.name[moref] = props.get("name", moref)
        parent = props.get("parent")
        self.parent[moref] = parent._moId if parent is not None else None
        self.kind[moref] = type(obj.obj).__name__

    def path(self, moref: str | None) -> str:
        """'DC0/vm/sub' for a folder; the root folder is left out, as vSphere does."""
        parts = []
        while moref is not None and self.parent.get(moref) is not None:
            parts.append(self.name.get(moref, moref))
            moref = self.parent.get(moref)
        return "/".join(reversed(parts))


_WITH_PARENT = (vim.Folder, vim.Datacenter, vim.Datastore, vim.StoragePod)
_NAME_PATHS = [(t, ["name", "parent"]) if t in _WITH_PARENT else (t, ["name"]) for t in _NAMED_TYPES]


# -- conversion ----------------------------------------------------------------


def _disk(device: Any, names: _Names) -> DiskInfo:
    backing = device.backing
    datastore = getattr(backing, "datastore", None)
    parent = getattr(backing, "parent", None)
    return DiskInfo(
        key=device.key,
        label=device.deviceInfo.label if device.deviceInfo else f"disk {device.key}",
        controller_key=device.controllerKey,
        unit_number=device.unitNumber,
        capacity=int(device.capacityInBytes or device.capacityInKB * 1024),
        file_name=backing.fileName,
        datastore=names.name.get(datastore._moId, "")
        if datastore is not None
        else backing.fileName[1:].split("]")[0],
        thin=getattr(backing, "thinProvisioned", None),
        eager_scrub=getattr(backing, "eagerlyScrub", None),
        change_id=getattr(backing, "changeId", None) or None,
        uuid=getattr(backing, "uuid", None),
        parent_file=parent.fileName if parent is not None else None,
        parents=_parents(backing),
        delta_format=getattr(backing, "deltaDiskFormat", None) or None,
    )


def _parents(backing: Any) -> tuple[str, ...]:
    """The file names of a backing's parents, nearest first (vSphere's chain is at most 32 deep)."""
    names: list[str] = []
    parent = getattr(backing, "parent", None)
    while parent is not None and len(names) < 256:
        names.append(parent.fileName)
        parent = getattr(parent, "parent", None)
    return tuple(names)


def disks_of(devices: Sequence[Any], names: _Names | None = None) -> tuple[DiskInfo, ...]:
    """The virtual disks in a device list (a VM's or a snapshot's config)."""
    lookup = names or _Names()
    return tuple(_disk(d, lookup) for d in devices if isinstance(d, vim.vm.device.VirtualDisk))


def snapshot_tree(nodes: Sequence[Any]) -> tuple[SnapshotInfo, ...]:
    return tuple(
        SnapshotInfo(
            moref=n.snapshot._moId,
            id=n.id,
            name=n.name,
            description=n.description or "",
            created=n.createTime,
            state=_power_state(n.state, f"snapshot {n.name}"),
            quiesced=bool(n.quiesced),
            children=snapshot_tree(n.childSnapshotList or []),
        )
        for n in nodes
    )


def _power_state(value: object, of: str) -> PowerState:
    """vCenter's power state as the Literal; an unknown one is vCenter breaking its own API."""
    for state in POWER_STATES:
        if str(value) == state:
            return state
    raise VSphereFault(
        f"vCenter reported power state {shown(value)} for {of}, not one of {', '.join(POWER_STATES)}"
    )


def _vm_info(obj: Any, names: _Names) -> VMInfo:
    p = _props(obj)
    snap = p.get("snapshot")
    host = p.get("runtime.host")
    pool = p.get("resourcePool")
    parent = p.get("parent")
    return VMInfo(
        moref=obj.obj._moId,
        name=p["name"],
        instance_uuid=p.get("config.instanceUuid"),
        power_state=_power_state(p.get("runtime.powerState"), str(p["name"])),
        template=bool(p.get("config.template")),
        host=names.name.get(host._moId) if host is not None else None,
        resource_pool=names.name.get(pool._moId) if pool is not None else None,
        folder=names.path(parent._moId) if parent is not None else "",
        datastores=tuple(names.name.get(ds._moId, ds._moId) for ds in p.get("datastore", [])),
        disks=disks_of(p.get("config.hardware.device", []), names),
        snapshots=snapshot_tree(snap.rootSnapshotList) if snap is not None else (),
        current_snapshot=snap.currentSnapshot._moId if snap is not None and snap.currentSnapshot else None,
        consolidation_needed=bool(p.get("runtime.consolidationNeeded")),
        cbt_enabled=bool(p.get("config.changeTrackingEnabled")),
    )


# -- public API ----------------------------------------------------------------


def read_inventory(conn: Connection) -> tuple[VMInfo, ...]:
    """Every VM's full picture, in a few round trips whatever their number."""
    with _View(conn, [vim.VirtualMachine, *_NAMED_TYPES]) as v:
        objects = _retrieve(conn, [_view_spec(v.view, [(vim.VirtualMachine, _VM_DETAIL), *_NAME_PATHS])])
    names = _Names()
    for o in objects:
        names.add(o)
    return tuple(
        sorted(
            (_vm_info(o, names) for o in objects if isinstance(o.obj, vim.VirtualMachine)),
            key=lambda i: i.name,
        )
    )


def _details(conn: Connection, morefs: Sequence[str], names: _Names) -> tuple[VMInfo, ...]:
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[
            vmodl.query.PropertyCollector.ObjectSpec(obj=conn.handle(vim.VirtualMachine, m), skip=False)
            for m in morefs
        ],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=_VM_DETAIL)],
    )
    objects = _retrieve(conn, [spec])
    if any(ref not in names.name for o in objects for ref in _referenced(o)):
        names = _all_names(conn, fresh=True)  # a folder, host or datastore newer than the names map
    return tuple(sorted((_vm_info(o, names) for o in objects), key=lambda i: i.name))


_NAMES_TTL = 60.0  # seconds a names map is trusted (renames are rare; a moref it lacks reloads it)
_names_cache: weakref.WeakKeyDictionary[Connection, tuple[float, _Names]] = weakref.WeakKeyDictionary()
_names_lock = threading.Lock()


def _all_names(conn: Connection, *, fresh: bool = False) -> _Names:
    """Names and parents of every folder, datacenter, host, pool and datastore (cached a minute)."""
    with _names_lock:
        cached = _names_cache.get(conn)
    if cached is not None and not fresh and time.monotonic() - cached[0] < _NAMES_TTL:
        return cached[1]
    with _View(conn, _NAMED_TYPES) as v:
        objects = _retrieve(conn, [_view_spec(v.view, _NAME_PATHS)])
    names = _Names()
    for o in objects:
        names.add(o)
    with _names_lock:
        _names_cache[conn] = (time.monotonic(), names)
    return names


def _referenced(obj: Any) -> set[str]:
    """The morefs a VM's details name that must be in the names map to be turned into names."""
    p = _props(obj)
    refs = {r._moId for r in (p.get("parent"), p.get("runtime.host"), p.get("resourcePool")) if r is not None}
    refs.update(ds._moId for ds in p.get("datastore", []))
    return refs


def vms_by_moref(conn: Connection, morefs: Sequence[str]) -> tuple[VMInfo, ...]:
    """The full picture of the VMs with these morefs (those that exist), without reading any other VM."""
    if not morefs:
        return ()
    names = _all_names(conn)
    try:
        return _details(conn, morefs, names)
    except NotFound:  # a moref of a VM that no longer exists
        return tuple(vm for m in morefs for vm in _details_if_exists(conn, m, names))


def _details_if_exists(conn: Connection, moref: str, names: _Names) -> tuple[VMInfo, ...]:
    try:
        return _details(conn, [moref], names)
    except NotFound:  # a moref of a VM that no longer exists
        return ()


def _morefs_named(conn: Connection, name: str | None) -> list[str]:
    """The morefs of the VMs called `name`: one paged read of the property `name` of every VM.

    vSphere has no index by VM name (the SearchIndex knows paths, UUIDs, DNS
    names and IPs), so a name costs one read of every VM's name; nothing else
    of theirs is read or decoded.
    """
    with _View(conn, [vim.VirtualMachine]) as v:
        objects = _retrieve(conn, [_view_spec(v.view, [(vim.VirtualMachine, ["name"])])])
    return [o.obj._moId for o in objects if _props(o).get("name") == name]


def find_vms(conn: Connection, selector: VMSelector) -> tuple[VMInfo, ...]:
    """The VMs `selector` matches (possibly none), each with its full picture.

    By moref: that VM's details only. By name (without a glob): every VM's
    name, then the details of the matches. Otherwise every VM's name, UUID
    and folder, then the details of the matches.
    """
    check_type(conn, Connection, "conn")
    check_type(selector, VMSelector, "selector")
    if selector.moref is not None or (selector.name is not None and selector.glob is None):
        # A moref names one object: read it (and the names around it), not the whole inventory. A
        # name: every VM's name and nothing else, then the details of those so called only.
        morefs = [selector.moref] if selector.moref is not None else _morefs_named(conn, selector.name)
        found = vms_by_moref(conn, morefs)
        return tuple(vm for vm in found if selector.matches(vm.name, vm.moref, vm.instance_uuid, vm.folder))
    with _View(conn, [vim.VirtualMachine, *_NAMED_TYPES]) as v:
        brief = _retrieve(conn, [_view_spec(v.view, [(vim.VirtualMachine, _VM_BRIEF), *_NAME_PATHS])])
    names = _Names()
    for o in brief:
        names.add(o)
    wanted = []
    for o in brief:
        if not isinstance(o.obj, vim.VirtualMachine):
            continue
        p = _props(o)
        folder = names.path(p["parent"]._moId) if p.get("parent") is not None else ""
        if selector.matches(p.get("name", ""), o.obj._moId, p.get("config.instanceUuid"), folder):
            wanted.append(o.obj._moId)
    if not wanted:
        return ()
    return _details(conn, wanted, names)


def get_vm(conn: Connection, selector: VMSelector | str) -> VMInfo:
    """Exactly one VM (a plain string is a name); NotFound or InvalidInput otherwise."""
    check_type(selector, (VMSelector, str), "the VM (a name or a VMSelector)")
    chosen = VMSelector(name=selector) if isinstance(selector, str) else selector
    found = find_vms(conn, chosen)
    if not found:
        raise NotFound(f"no VM matches {chosen.describe()}")
    if len(found) > 1:
        raise InvalidInput(
            f"{len(found)} VMs match {chosen.describe()}: {', '.join(v.name for v in found[:5])}"
        )
    return found[0]


def snapshot_disks(conn: Connection, snapshot_moref: str) -> tuple[DiskInfo, ...]:
    """The disks as a snapshot froze them: its own backings, capacities and change ids."""
    snapshot = conn.handle(vim.vm.Snapshot, snapshot_moref)
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=snapshot, skip=False)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.vm.Snapshot, pathSet=["config.hardware.device"]
            )
        ],
    )
    objects = _retrieve(conn, [spec])
    if not objects:
        raise NotFound(f"snapshot {snapshot_moref} not found")
    return disks_of(_props(objects[0]).get("config.hardware.device", []))


def vm_options(conn: Connection, prefix: str) -> dict[str, dict[str, str]]:
    """Per VM moref, its extraConfig options whose key starts with `prefix` (VMs without any left out).

    One paged read for the whole inventory, like every other read here.
    """
    with _View(conn, [vim.VirtualMachine]) as v:
        objects = _retrieve(conn, [_view_spec(v.view, [(vim.VirtualMachine, ["config.extraConfig"])])])
    found: dict[str, dict[str, str]] = {}
    for o in objects:
        options = {
            opt.key: str(opt.value)
            for opt in _props(o).get("config.extraConfig", [])
            if opt.key.startswith(prefix)
        }
        if options:
            found[o.obj._moId] = options
    return found


def _datacenters_of(names: _Names, datastore: str) -> list[str]:
    """The inventory paths of the datacenters holding a datastore named `datastore`."""
    found = set()
    for moref, kind in names.kind.items():
        if not kind.endswith("Datastore") or names.name.get(moref) != datastore:
            continue
        walked: str | None = moref
        while walked is not None and not names.kind.get(walked, "").endswith("Datacenter"):
            walked = names.parent.get(walked)
        if walked is not None:
            found.add(names.path(walked))
    return sorted(found)


_types_cache: weakref.WeakKeyDictionary[Connection, tuple[float, dict[str, str]]] = (
    weakref.WeakKeyDictionary()
)


def datastore_type(conn: Connection, datastore: str) -> str:
    """A datastore's `summary.type` by name: "VMFS", "NFS", "NFS41", "vsan", "VVOL", … ("" if unknown).

    The types of every datastore are read in one call and cached a minute per
    connection (reloaded once for a name not in them), as the names map is.
    A datastore's type never changes; a name in several datacenters with
    different types gives the first one met that is not VMFS or NFS.
    """
    check_type(datastore, str, "datastore")
    for fresh in (False, True):
        with _names_lock:
            cached = _types_cache.get(conn)
        if cached is None or fresh or time.monotonic() - cached[0] >= _NAMES_TTL:
            with _View(conn, [vim.Datastore]) as v:
                objects = _retrieve(conn, [_view_spec(v.view, [(vim.Datastore, ["name", "summary.type"])])])
            types: dict[str, str] = {}
            for o in objects:
                props = _props(o)
                name, kind = props.get("name"), props.get("summary.type") or ""
                if name is not None and (name not in types or types[name] in ("VMFS", "NFS")):
                    types[name] = kind
            cached = (time.monotonic(), types)
            with _names_lock:
                _types_cache[conn] = cached
        if datastore in cached[1]:
            return cached[1][datastore]
    return ""


def datastore_datacenters(conn: Connection, datastore: str) -> tuple[str, ...]:
    """The inventory paths ("DC0", "Sites/DC0") of the datacenters holding a datastore of that name.

    A datacenter's inventory path is what vCenter's `/folder` endpoint wants
    as `dcPath`: its name only when it sits in the root folder. A datastore
    name is unique within a datacenter, not across them. Read from the names
    map (cached a minute per connection, reloaded once when the name is not in it).
    """
    check_type(datastore, str, "datastore")
    found = _datacenters_of(_all_names(conn), datastore)
    if not found:
        found = _datacenters_of(_all_names(conn, fresh=True), datastore)
    return tuple(found)


def datacenter_path(conn: Connection, datastore: str, *, near: str | None = None) -> str:
    """The inventory path of the datacenter of datastore `datastore`: `/folder`'s `dcPath`.

    When datastores of that name sit in several datacenters, `near` (the
    datacenter's name or path, or a VM's folder path) picks the one meant.
    NotFound when no datacenter holds such a datastore; InvalidInput when the
    choice stays ambiguous.
    """
    candidates = datastore_datacenters(conn, datastore)
    if not candidates:
        raise NotFound(f"no datacenter holds a datastore named {datastore!r}")
    if len(candidates) > 1 and near:
        near = near.strip("/")
        candidates = tuple(
            c
            for c in candidates
            if near in (c, c.rsplit("/", 1)[-1]) or near.startswith(c + "/") or c.startswith(near + "/")
        )
    if len(candidates) != 1:
        shown_paths = ", ".join(datastore_datacenters(conn, datastore))
        raise InvalidInput(
            f"datastore {datastore!r} is in several datacenters ({shown_paths}): say which one (its path)"
        )
    return candidates[0]


@dataclass(frozen=True, slots=True)
class NamedObject:
    """A managed object by name: what placement arguments resolve to."""

    moref: str
    name: str
    kind: str
    path: str
    free_space: int | None = None


def named_objects(conn: Connection) -> tuple[NamedObject, ...]:
    """Every datastore, host, resource pool, cluster, folder and datacenter, in one read."""
    kinds = [
        vim.Datastore,
        vim.HostSystem,
        vim.ResourcePool,
        vim.ClusterComputeResource,
        vim.Folder,
        vim.Datacenter,
    ]
    paths = [
        (t, ["name", "parent", "summary.freeSpace"] if t is vim.Datastore else ["name", "parent"])
        for t in kinds
    ]
    with _View(conn, kinds) as v:
        objects = _retrieve(conn, [_view_spec(v.view, paths)])
    names = _Names()
    for o in objects:
        names.add(o)
    found = []
    for o in objects:
        p = _props(o)
        moref = o.obj._moId
        free = p.get("summary.freeSpace")
        found.append(
            NamedObject(
                moref=moref,
                name=names.name[moref],
                kind=type(o.obj).__name__.rsplit(".", 1)[-1],
                path=names.path(moref),
                free_space=int(free) if free is not None else None,
            )
        )
    return tuple(found)


VMRef = VMInfo | VMSelector | str
"""A VM given by name, by selector, or by an earlier VMInfo."""


def resolve_vm(conn: Connection, vm: VMRef) -> VMInfo:
    """The VM's current state, whichever way it was given; InvalidInput for anything else."""
    check_type(conn, Connection, "conn")
    if not isinstance(vm, VMInfo | VMSelector | str):
        raise InvalidInput(
            f"the VM must be a name, a VMSelector or a VMInfo, not {type(vm).__name__} {shown(vm)}"
        )
    return get_vm(conn, VMSelector(moref=vm.moref) if isinstance(vm, VMInfo) else vm)


def vm_object(conn: Connection, moref: str) -> vim.VirtualMachine:
    """The pyVmomi handle of a VM, for the SOAP layers below the public API."""
    return conn.handle(vim.VirtualMachine, moref)
