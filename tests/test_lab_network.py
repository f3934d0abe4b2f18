"""The lab's networks: one vmxnet3 per VM on "VM Network", a "DR Network" on every host,
vcsim's distributed port group, and adapters that clones keep and ReconfigVM moves."""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil


def networks(si: Any) -> dict[str, Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.Network], True)
    try:
        return {n.name: n for n in view.view}
    finally:
        view.Destroy()


def hosts(si: Any) -> list[Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.HostSystem], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def nics(vm: Any) -> list[Any]:
    return [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]


def edit_nic(vm: Any, backing: Any) -> None:
    nic = nics(vm)[0]
    nic.backing = backing
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)
    labutil.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[change])))


def standard(network: Any) -> Any:
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network.name, network=network)


def distributed(portgroup: Any) -> Any:
    port = vim.dvs.PortConnection(
        portgroupKey=portgroup.key, switchUuid=portgroup.config.distributedVirtualSwitch.uuid
    )
    return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(port=port)


def clone(vm: Any, name: str) -> Any:
    return labutil.wait(
        vm.CloneVM_Task(folder=vm.parent, name=name, spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec()))
    )


def test_every_vm_has_one_connected_vmxnet3_on_vm_network(si: Any, vm: Any) -> None:
    [nic] = nics(vm)
    assert isinstance(nic, vim.vm.device.VirtualVmxnet3)
    assert isinstance(nic.backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo)
    assert nic.backing.deviceName == "VM Network"
    assert nic.backing.network is not None and nic.backing.network.name == "VM Network"
    assert nic.connectable is not None
    assert nic.connectable.connected and nic.connectable.startConnected
    assert nic.addressType == "generated"
    assert nic.macAddress is not None and nic.macAddress.startswith("00:0c:29:")
    assert [n.name for n in vm.network] == ["VM Network"]


def test_the_inventory_has_two_standard_networks_on_every_host_and_a_distributed_port_group(si: Any) -> None:
    found = networks(si)
    for name in ("VM Network", "DR Network"):
        assert type(found[name]) is vim.Network, name
        assert sorted(h.name for h in found[name].host) == sorted(h.name for h in hosts(si))
    assert isinstance(found["DC0_DVPG0"], vim.dvs.DistributedVirtualPortgroup)
    for host in hosts(si):
        assert {"VM Network", "DR Network", "DC0_DVPG0"} <= {n.name for n in host.network}
        assert "DR Network" in [pg.spec.name for pg in host.config.network.portgroup]
        [vswitch] = host.config.network.vswitch
        assert "key-vim.host.PortGroup-DR Network" in vswitch.portgroup


def test_a_clone_keeps_the_adapter_with_a_mac_of_its_own(si: Any, vm: Any, vm_name: str) -> None:
    [source] = nics(vm)
    copy = clone(vm, f"{vm_name}-nic-clone")
    [nic] = nics(copy)
    assert type(nic) is type(source)
    assert nic.backing.deviceName == "VM Network"
    assert nic.connectable.startConnected
    assert nic.macAddress and nic.macAddress != source.macAddress
    assert [n.name for n in copy.network] == ["VM Network"]


def test_reconfigure_moves_the_adapter_to_another_standard_network(si: Any, vm: Any) -> None:
    dr = networks(si)["DR Network"]
    key = nics(vm)[0].key
    edit_nic(vm, standard(dr))
    [nic] = nics(vm)
    assert nic.key == key
    assert nic.backing.deviceName == "DR Network" and nic.backing.network == dr
    assert list(vm.network) == [dr]
    assert [g.network for g in vm.guest.net] == ["DR Network"]


def test_reconfigure_moves_the_adapter_to_the_distributed_port_group(si: Any, vm: Any) -> None:
    portgroup = networks(si)["DC0_DVPG0"]
    edit_nic(vm, distributed(portgroup))
    [nic] = nics(vm)
    assert isinstance(nic.backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    assert nic.backing.port.portgroupKey == portgroup.key
    assert list(vm.network) == [portgroup]
    edit_nic(vm, standard(networks(si)["VM Network"]))  # and back
    assert [n.name for n in vm.network] == ["VM Network"]


def test_a_clone_of_a_reconfigured_vm_stays_on_its_network(si: Any, vm: Any, vm_name: str) -> None:
    edit_nic(vm, standard(networks(si)["DR Network"]))
    copy = clone(vm, f"{vm_name}-dr-clone")
    assert [n.backing.deviceName for n in nics(copy)] == ["DR Network"]
    assert [n.name for n in copy.network] == ["DR Network"]


def test_an_unknown_network_is_refused_and_nothing_changes(si: Any, vm: Any) -> None:
    backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="No Such Network")
    with pytest.raises(vim.fault.InvalidDeviceBacking, match="No Such Network"):
        edit_nic(vm, backing)
    assert nics(vm)[0].backing.deviceName == "VM Network"
    assert [n.name for n in vm.network] == ["VM Network"]


def test_a_port_group_key_of_another_switch_is_refused(si: Any, vm: Any) -> None:
    backing = distributed(networks(si)["DC0_DVPG0"])
    backing.port.switchUuid = "00 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00"
    with pytest.raises(vim.fault.InvalidDeviceBacking):
        edit_nic(vm, backing)
    assert [n.name for n in vm.network] == ["VM Network"]


def test_revert_brings_back_the_network_of_the_snapshot(si: Any, vm: Any) -> None:
    snap = labutil.snapshot(vm, "on-vm-network")
    edit_nic(vm, standard(networks(si)["DR Network"]))
    labutil.wait(snap.RevertToSnapshot_Task())
    assert nics(vm)[0].backing.deviceName == "VM Network"
    assert [n.name for n in vm.network] == ["VM Network"]
