"""Empty VMs shaped like another: how a replica starts on a vCenter its source is not in.

A clone copies a VM inside one vCenter. Across vCenters, CloneVM_Task needs
a ServiceLocator and linked vCenters, which DR products do not rely on: the
replica is created on the recovery site with the source's shape (CPUs,
memory, guest OS, NICs on the recovery site's port groups) and its disks
are added empty, then filled through the data path.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.inventory import (
    VMInfo,
    VMRef,
    VMSelector,
    find_vms,
    get_vm,
    named_objects,
    resolve_vm,
    vm_object,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.networks import nic_backings
from vsphere_replicator.tasks import run_task


@dataclass(frozen=True, slots=True)
class Hardware(Shown):
    """What a VM is made of, besides its disks: enough to create one like it."""

    cpus: int
    memory_mb: int
    guest_id: str
    networks: tuple[str, ...]  # each NIC's port group, in device order


def vm_hardware(conn: Connection, vm: VMRef) -> Hardware:
    info = resolve_vm(conn, vm)
    handle = vm_object(conn, info.moref)
    config = conn.call("read the VM's hardware", lambda: handle.config)
    if config is None:
        raise NotFound(f"{info.name} has no configuration to read its hardware from")
    attached = conn.call("read the VM's networks", lambda: handle.network)
    names = {n._moId: n.name for n in attached}
    keys = {getattr(n, "key", None): n.name for n in attached}  # distributed port groups by key
    networks: list[str] = []
    for device in config.hardware.device:
        if isinstance(device, vim.vm.device.VirtualEthernetCard):
            networks.append(_port_group(device.backing, names, keys))
    return Hardware(
        cpus=int(config.hardware.numCPU),
        memory_mb=int(config.hardware.memoryMB),
        guest_id=str(config.guestId or "otherGuest64"),
        networks=tuple(networks),
    )


def _port_group(backing: Any, names: dict[str, str], keys: dict[Any, str]) -> str:
    """The port group name a NIC's backing is on."""
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        return keys.get(backing.port.portgroupKey, str(backing.port.portgroupKey))
    network = getattr(backing, "network", None)
    if network is not None:
        return names.get(network._moId, str(getattr(backing, "deviceName", "")))
    return str(getattr(backing, "deviceName", ""))


def _placement(conn: Connection, datastore: str) -> tuple[Any, Any]:
    """(VM folder, resource pool) for a VM whose home is `datastore`: its datacenter's, a host's of it."""
    found = [o for o in named_objects(conn) if o.kind == "Datastore" and o.name == datastore]
    if not found:
        raise NotFound(f"no datastore named {datastore!r}")
    store = conn.handle(vim.Datastore, found[0].moref)
    hosts = conn.call("read the datastore's hosts", lambda: store.host)
    if not hosts:
        raise NotFound(f"datastore {datastore} is mounted on no host")
    compute: Any = conn.call("read the host's cluster", lambda: hosts[0].key.parent)
    pool = conn.call("read the cluster's resource pool", lambda: compute.resourcePool)
    parent: Any = conn.call("find the datacenter", lambda: store.parent)
    for _ in range(64):  # folders nest, but not without end
        if isinstance(parent, vim.Datacenter):
            break
        parent = conn.call("find the datacenter", functools.partial(getattr, parent, "parent"))
    if not isinstance(parent, vim.Datacenter):
        raise NotFound(f"datastore {datastore} is in no datacenter")
    datacenter = parent
    folder = conn.call("read the datacenter's VM folder", lambda: datacenter.vmFolder)
    return folder, pool


def create_vm(
    conn: Connection,
    name: str,
    datastore: str,
    hardware: Hardware,
    *,
    networks: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
) -> VMInfo:
    """Create a powered-off VM like `hardware` on `datastore`, with a SCSI controller and no disks.

    Each NIC goes on its port group, or the one `networks` maps it to;
    InvalidInput (creating nothing) when the name is taken, NotFound when a
    port group or the datastore does not exist here.
    """
    if find_vms(conn, VMSelector(name=name)):
        raise InvalidInput(f"a VM named {name!r} already exists")
    mapping = dict(networks or {})
    wanted = [mapping.get(n, n) for n in hardware.networks]
    backings = nic_backings(conn, wanted)
    folder, pool = _placement(conn, datastore)
    devices = [
        vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.ParaVirtualSCSIController(key=-100, busNumber=0, sharedBus="noSharing"),
        )
    ]
    for index, network in enumerate(wanted):
        nic = vim.vm.device.VirtualVmxnet3(key=-(200 + index), backing=backings[network])
        nic.deviceInfo = vim.Description(label=f"Network adapter {index + 1}", summary=network)
        nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, allowGuestControl=True)
        devices.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId=hardware.guest_id,
        numCPUs=hardware.cpus,
        memoryMB=hardware.memory_mb,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=devices,
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in (options or {}).items()],
    )
    get_logger(vm=name, operation="create").info("vm_create_started", datastore=datastore)
    result = run_task(
        conn,
        lambda: folder.CreateVM_Task(config=spec, pool=pool),
        what=f"create {name} on {datastore}",
        vm=name,
        returns=vim.VirtualMachine,
    )
    return get_vm(conn, VMSelector(moref=result._moId))
