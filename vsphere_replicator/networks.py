"""Moving a VM's NICs to other port groups: what a failover does to reach the recovery site's networks."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.inventory import vm_object
from vsphere_replicator.logs import get_logger
from vsphere_replicator.tasks import reconfigure_vm


@dataclass(frozen=True, slots=True)
class NicChange(Shown):
    """One NIC moved from one port group to another."""

    label: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class _Network:
    moref: str
    name: str
    portgroup_key: str | None  # set for a distributed port group
    switch_uuid: str | None


def _networks(conn: Connection) -> dict[str, _Network]:
    content = conn.content
    view = conn.call(
        "read networks",
        lambda: content.viewManager.CreateContainerView(content.rootFolder, [vim.Network], True),
    )
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=vim.Network, pathSet=["name"]),
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.dvs.DistributedVirtualPortgroup,
                    pathSet=["name", "key", "config.distributedVirtualSwitch"],
                ),
            ],
        )
        objects = conn.call("read networks", lambda: content.propertyCollector.RetrieveContents([spec]))
    finally:
        conn.call("read networks", view.DestroyView)
    switches: dict[str, str] = {}
    found = {}
    for o in objects:
        props = {p.name: p.val for p in o.propSet}
        dvs = props.get("config.distributedVirtualSwitch")
        uuid = None
        if dvs is not None:
            if dvs._moId not in switches:
                switches[dvs._moId] = str(conn.call("read networks", functools.partial(getattr, dvs, "uuid")))
            uuid = switches[dvs._moId]
        found[props["name"]] = _Network(
            moref=o.obj._moId, name=props["name"], portgroup_key=props.get("key"), switch_uuid=uuid
        )
    return found


def _backing(conn: Connection, network: _Network) -> vim.vm.device.VirtualDevice.BackingInfo:
    if network.portgroup_key is not None:
        port = vim.dvs.PortConnection(portgroupKey=network.portgroup_key, switchUuid=network.switch_uuid)
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(port=port)
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
        deviceName=network.name, network=conn.handle(vim.Network, network.moref)
    )


def _current_network(nic: Any, networks: Mapping[str, _Network]) -> str:
    backing = nic.backing
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = backing.port.portgroupKey
        return next((n.name for n in networks.values() if n.portgroup_key == key), str(key))
    return str(getattr(backing, "deviceName", ""))


def check_networks(conn: Connection, names: Iterable[str], *, what: str | None = None) -> None:
    """Raise NotFound naming every port group in `names` that does not exist.

    With `what` (the option the names came from), a missing one is the
    caller's input: InvalidInput naming the option.
    """
    wanted = set(names)
    if not wanted:
        return
    missing = sorted(wanted - set(_networks(conn)))
    if missing:
        listed = ", ".join(repr(m) for m in missing)
        if what is not None:
            raise InvalidInput(f"{what}: no port group named {listed}")
        raise NotFound(f"no port group named {listed}")


def remap_nics(conn: Connection, vm_moref: str, mapping: Mapping[str, str]) -> tuple[NicChange, ...]:
    """Move every NIC on a port group named in `mapping` to the port group it maps to.

    Raises NotFound (changing nothing) when a target port group does not exist.
    """
    if not mapping:
        return ()
    networks = _networks(conn)
    missing = sorted(set(mapping.values()) - set(networks))
    if missing:
        raise NotFound(f"no port group named {', '.join(missing)}")
    handle = vm_object(conn, vm_moref)
    config = conn.call("read the VM's devices", lambda: handle.config)
    if config is None:
        raise NotFound(f"VM {vm_moref} has no configuration to read its network adapters from")
    devices = config.hardware.device
    changes, specs = [], []
    for nic in devices:
        if not isinstance(nic, vim.vm.device.VirtualEthernetCard):
            continue
        old = _current_network(nic, networks)
        if old not in mapping or mapping[old] == old:
            continue
        nic.backing = _backing(conn, networks[mapping[old]])
        specs.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
        changes.append(
            NicChange(
                label=nic.deviceInfo.label if nic.deviceInfo else str(nic.key), old=old, new=mapping[old]
            )
        )
    if specs:
        reconfigure_vm(
            conn,
            vm_moref,
            vim.vm.ConfigSpec(deviceChange=specs),
            what="move NICs to the recovery networks",
            vm=vm_moref,
        )
        get_logger(vm=vm_moref, operation="remap_nics").info("nics_moved", changes=[c.new for c in changes])
    return tuple(changes)
