"""Guest customization (CustomizeVM_Task, CloneVM_Task spec.customization), checked with plain pyVmomi."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests import labutil
from vsphere_replicator.lab import LabControl, LabInfo, running_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def custom_lab() -> Iterator[LabInfo]:
    with running_lab(vms=6, disk_size=4 << 20, hosts=1) as info:
        yield info


@pytest.fixture(scope="module")
def custom_si(custom_lab: LabInfo) -> Iterator[Any]:
    si = labutil.connect(custom_lab)
    try:
        yield si
    finally:
        labutil.disconnect(si)


def fixed(address: str, mask: str = "255.255.255.0", gateway: str | None = None, **kw: Any) -> Any:
    adapter = vim.vm.customization.IPSettings(
        ip=vim.vm.customization.FixedIp(ipAddress=address),
        subnetMask=mask,
        gateway=[gateway] if gateway else [],
        **kw,
    )
    return vim.vm.customization.AdapterMapping(adapter=adapter)


def dhcp() -> Any:
    return vim.vm.customization.AdapterMapping(
        adapter=vim.vm.customization.IPSettings(ip=vim.vm.customization.DhcpIpGenerator())
    )


def linux(host: str, *nics: Any, dns: list[str] | None = None) -> Any:
    return vim.vm.customization.Specification(
        identity=vim.vm.customization.LinuxPrep(
            hostName=vim.vm.customization.FixedName(name=host), domain="dr.example"
        ),
        globalIPSettings=vim.vm.customization.GlobalIPSettings(
            dnsServerList=dns or [], dnsSuffixList=["dr.example"]
        ),
        nicSettingMap=list(nics),
    )


def sysprep(computer: str, *nics: Any) -> Any:
    return vim.vm.customization.Specification(
        identity=vim.vm.customization.Sysprep(
            guiUnattended=vim.vm.customization.GuiUnattended(autoLogon=False, autoLogonCount=0, timeZone=85),
            userData=vim.vm.customization.UserData(
                fullName="DR",
                orgName="Example",
                computerName=vim.vm.customization.FixedName(name=computer),
                productId="",
            ),
            identification=vim.vm.customization.Identification(joinWorkgroup="WORKGROUP"),
        ),
        globalIPSettings=vim.vm.customization.GlobalIPSettings(),
        nicSettingMap=list(nics),
    )


def powered_off(si: Any, name: str) -> Any:
    vm = labutil.find_vm(si, name)
    if vm.runtime.powerState != "poweredOff":
        labutil.wait(vm.PowerOffVM_Task())
    return vm


def test_a_linux_customization_changes_what_the_guest_reports_at_the_next_power_on(custom_si: Any) -> None:
    vm = powered_off(custom_si, "lab-vm-0001")
    before = (vm.guest.ipAddress, vm.guest.hostName, [list(n.ipAddress) for n in vm.guest.net])
    spec = linux("app01", fixed("10.20.30.41", gateway="10.20.30.1"), dns=["10.20.0.53", "10.20.0.54"])
    labutil.wait(vm.CustomizeVM_Task(spec=spec))
    assert vm.config.tools.pendingCustomization
    # Until the power-on, nothing changes in the guest.
    assert (vm.guest.ipAddress, vm.guest.hostName, [list(n.ipAddress) for n in vm.guest.net]) == before
    labutil.wait(vm.PowerOnVM_Task())
    guest = vm.guest
    assert not vm.config.tools.pendingCustomization
    assert (guest.ipAddress, guest.hostName) == ("10.20.30.41", "app01")
    (nic,) = guest.net
    assert list(nic.ipAddress) == ["10.20.30.41"] and nic.deviceConfigId == 4000
    assert nic.network == "VM Network"
    (address,) = nic.ipConfig.ipAddress
    assert (address.ipAddress, address.prefixLength, address.origin) == ("10.20.30.41", 24, "manual")
    assert list(nic.dnsConfig.ipAddress) == ["10.20.0.53", "10.20.0.54"]
    assert nic.dnsConfig.domainName == "dr.example"
    (stack,) = guest.ipStack
    assert stack.ipRouteConfig.ipRoute[0].gateway.ipAddress == "10.20.30.1"
    assert list(stack.dnsConfig.searchDomain) == ["dr.example"]
    assert vm.summary.guest.ipAddress == "10.20.30.41"
    # The guest keeps its settings across power cycles.
    labutil.wait(vm.PowerOffVM_Task())
    labutil.wait(vm.PowerOnVM_Task())
    assert (vm.guest.ipAddress, vm.guest.hostName) == ("10.20.30.41", "app01")


def test_customization_is_refused_as_vsphere_refuses_it(custom_si: Any) -> None:
    vm = labutil.find_vm(custom_si, "lab-vm-0002")
    assert vm.runtime.powerState == "poweredOn"
    with pytest.raises(vim.fault.InvalidPowerState):
        labutil.wait(vm.CustomizeVM_Task(spec=linux("a", fixed("10.0.0.2"))))
    labutil.wait(vm.PowerOffVM_Task())
    with pytest.raises(vim.fault.NicSettingMismatch) as mismatch:
        labutil.wait(vm.CustomizeVM_Task(spec=linux("a", fixed("10.0.0.2"), dhcp())))
    assert (mismatch.value.numberOfNicsInSpec, mismatch.value.numberOfNicsInVM) == (2, 1)
    with pytest.raises(vim.fault.UncustomizableGuest) as wrong_os:
        labutil.wait(vm.CustomizeVM_Task(spec=sysprep("WIN01", dhcp())))
    assert wrong_os.value.uncustomizableGuestOS == "otherLinux64Guest"
    bad = {
        "spec.nicSettingMap[0].adapter.ip.ipAddress": linux("a", fixed("10.0.0.300")),
        "spec.nicSettingMap[0].adapter.subnetMask": linux("a", fixed("10.0.0.2", mask="255.0.255.0")),
        "spec.nicSettingMap[0].adapter.gateway": linux("a", fixed("10.0.0.2", gateway="10.9.9.1")),
        "spec.identity.hostName": linux("bad_name", dhcp()),
        "spec.globalIPSettings.dnsServerList": linux("a", dhcp(), dns=["dns.example"]),
    }
    for prop, spec in bad.items():
        with pytest.raises(vmodl.fault.InvalidArgument) as invalid:
            labutil.wait(vm.CustomizeVM_Task(spec=spec))
        assert invalid.value.invalidProperty == prop
    unknown_mac = linux("a", fixed("10.0.0.2"))
    unknown_mac.nicSettingMap[0].macAddress = "00:50:56:00:00:01"
    with pytest.raises(vmodl.fault.InvalidArgument):
        labutil.wait(vm.CustomizeVM_Task(spec=unknown_mac))
    assert not vm.config.tools.pendingCustomization  # nothing refused is left pending
    labutil.wait(vm.CustomizeVM_Task(spec=linux("b", dhcp())))
    with pytest.raises(vim.fault.CustomizationPending):
        labutil.wait(vm.CustomizeVM_Task(spec=linux("c", dhcp())))
    labutil.wait(vm.PowerOnVM_Task())
    assert vm.guest.hostName == "b"


def test_sysprep_with_dhcp_on_a_windows_guest_matched_by_mac(custom_si: Any) -> None:
    vm = powered_off(custom_si, "lab-vm-0003")
    labutil.wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(guestId="windows9Server64Guest")))
    assert vm.config.guestId == "windows9Server64Guest"
    mac = next(
        d.macAddress for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)
    )
    mapping = dhcp()
    mapping.macAddress = mac
    labutil.wait(vm.CustomizeVM_Task(spec=sysprep("WIN-DR-01", mapping)))
    labutil.wait(vm.PowerOnVM_Task())
    assert vm.guest.hostName == "WIN-DR-01"
    leased = ipaddress.ip_address(vm.guest.ipAddress)
    assert leased in ipaddress.ip_network("172.16.0.0/16")
    (address,) = vm.guest.net[0].ipConfig.ipAddress
    assert (address.prefixLength, address.origin) == (16, "dhcp")
    with pytest.raises(vim.fault.UncustomizableGuest):
        labutil.wait(vm.PowerOffVM_Task())
        labutil.wait(vm.CustomizeVM_Task(spec=linux("lnx", dhcp())))


def test_a_clone_with_a_customization_comes_up_with_its_new_address(custom_si: Any) -> None:
    vm = labutil.find_vm(custom_si, "lab-vm-0004")
    snap = labutil.snapshot(vm, "for-test")
    dc = custom_si.content.rootFolder.childEntity[0]
    spec = vim.vm.CloneSpec(
        snapshot=snap,
        location=vim.vm.RelocateSpec(diskMoveType="createNewChildDiskBacking"),
        powerOn=True,
        template=False,
        customization=linux("app04-test", fixed("192.168.50.4", gateway="192.168.50.1")),
    )
    clone = labutil.wait(vm.CloneVM_Task(folder=dc.vmFolder, name="lab-vm-0004-test", spec=spec))
    assert clone.runtime.powerState == "poweredOn"
    assert (clone.guest.ipAddress, clone.guest.hostName) == ("192.168.50.4", "app04-test")
    assert not clone.config.tools.pendingCustomization
    assert vm.guest.ipAddress is None  # the source is untouched
    # A refused customization creates no clone.
    spec.customization = linux("x", fixed("192.168.50.5"), dhcp())
    with pytest.raises(vim.fault.NicSettingMismatch):
        labutil.wait(vm.CloneVM_Task(folder=dc.vmFolder, name="lab-vm-0004-bad", spec=spec))
    assert custom_si.content.searchIndex.FindByInventoryPath("DC0/vm/lab-vm-0004-bad") is None
    labutil.wait(clone.PowerOffVM_Task())
    labutil.wait(clone.Destroy_Task())
    labutil.wait(snap.RemoveSnapshot_Task(removeChildren=False))


def test_a_customization_waits_for_vmware_tools_in_the_guest(custom_lab: LabInfo, custom_si: Any) -> None:
    """Tools carry the customization out: a guest without running Tools keeps it pending."""
    vm = powered_off(custom_si, "lab-vm-0006")
    labutil.wait(vm.CustomizeVM_Task(spec=linux("app06", fixed("10.20.30.46"))))
    control = LabControl(custom_lab)
    control.set_tools("lab-vm-0006", "notRunning")
    try:
        labutil.wait(vm.PowerOnVM_Task())
        assert vm.config.tools.pendingCustomization  # still to run
        assert vm.guest.ipAddress != "10.20.30.46"
        control.set_tools("lab-vm-0006", "running")  # Tools start in the guest: it runs now
        assert not vm.config.tools.pendingCustomization
        assert (vm.guest.ipAddress, vm.guest.hostName) == ("10.20.30.46", "app06")
    finally:
        control.set_tools("lab-vm-0006", "running")
