"""Moving a VM's NICs to other port groups: what a failover does to reach the recovery site's networks."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.inventory import view_contents, vm_object
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
    objects = view_contents(
        conn,
        [
            (vim.Network, ["name"]),
            (vim.dvs.DistributedVirtualPortgroup, ["name", "key", "config.distributedVirtualSwitch"]),
        ],
    )
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


def nic_backings(
    conn: Connection, names: Iterable[str]
) -> dict[str, vim.vm.device.VirtualDevice.BackingInfo]:
    """A NIC backing for each port group named, for a VM being created; NotFound naming any missing."""
    wanted = list(dict.fromkeys(names))
    networks = _networks(conn)
    missing = [n for n in wanted if n not in networks]
    if missing:
        raise NotFound(f"no port group named {', '.join(repr(m) for m in missing)}")
    return {name: _backing(conn, networks[name]) for name in wanted}


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


def _nics_and_networks(
    conn: Connection, vm_moref: str, wanted: Iterable[str]
) -> tuple[dict[str, _Network], Any]:
    """The port groups here (NotFound naming any of `wanted` missing) and the VM's devices."""
    networks = _networks(conn)
    missing = sorted(set(wanted) - set(networks))
    if missing:
        raise NotFound(f"no port group named {', '.join(missing)}")
    handle = vm_object(conn, vm_moref)
    config = conn.call("read the VM's devices", lambda: handle.config)
    if config is None:
        raise NotFound(f"VM {vm_moref} has no configuration to read its network adapters from")
    return networks, config.hardware.device


def remap_nics(conn: Connection, vm_moref: str, mapping: Mapping[str, str]) -> tuple[NicChange, ...]:
    """Move every NIC on a port group named in `mapping` to the port group it maps to.

    Raises NotFound (changing nothing) when a target port group does not exist.
    """
    if not mapping:
        return ()
    networks, devices = _nics_and_networks(conn, vm_moref, mapping.values())
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


DISCONNECTED = "(disconnected)"  # NicChange.new of an adapter a test copy keeps off every network


def isolate_nics(
    conn: Connection,
    vm_moref: str,
    test_networks: Mapping[str, str],
    aliases: Mapping[str, str] | None = None,
) -> tuple[NicChange, ...]:
    """Put a test copy's NICs on their test networks; disconnect every NIC without one.

    A test must not answer on production's networks with production's
    addresses: vSphere Replication disconnects the NICs of a test recovery
    unless a test network is mapped for them. A NIC matches `test_networks`
    by its port group, or by the name `aliases` gives that port group (the
    source's port group, for a replica whose NICs sit on recovery networks).
    Raises NotFound (changing nothing) when a test network does not exist.
    """
    networks, devices = _nics_and_networks(conn, vm_moref, test_networks.values())
    changes, specs = [], []
    for nic in devices:
        if not isinstance(nic, vim.vm.device.VirtualEthernetCard):
            continue
        old = _current_network(nic, networks)
        label = nic.deviceInfo.label if nic.deviceInfo else str(nic.key)
        wanted = test_networks.get(old) or test_networks.get((aliases or {}).get(old, ""))
        if wanted is not None:
            nic.backing = _backing(conn, networks[wanted])
            new = wanted
        else:
            new = DISCONNECTED
        nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=wanted is not None,
            connected=wanted is not None,
            allowGuestControl=wanted is not None,
        )
        specs.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
        changes.append(NicChange(label=label, old=old, new=new))
    if specs:
        reconfigure_vm(
            conn,
            vm_moref,
            vim.vm.ConfigSpec(deviceChange=specs),
            what="put the test copy's NICs on test networks or disconnect them",
            vm=vm_moref,
        )
        get_logger(vm=vm_moref, operation="isolate_nics").info(
            "nics_isolated", changes=[c.new for c in changes]
        )
    return tuple(changes)
