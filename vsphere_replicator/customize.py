"""Re-IP: a recovered VM's addresses on the recovery site, set by guest customization.

The recovery site's networks have their own subnets: a VM brought up there
with its production addresses answers nowhere. vSphere changes a guest's
IP settings with a customization spec (`CustomizeVM_Task`): a LinuxPrep or
Sysprep identity, one adapter mapping per NIC in device order (fixed IPv4
address, mask, gateway; or DHCP) and DNS servers, applied by VMware Tools at
the next power-on. So it is applied to a powered-off VM just before it is
powered on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyVmomi import vim

from vsphere_replicator.checks import check_type
from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound, VSphereFault
from vsphere_replicator.inventory import vm_object
from vsphere_replicator.logs import get_logger
from vsphere_replicator.tasks import run_task


def _ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except (ipaddress.AddressValueError, ValueError):
        raise InvalidInput(f"{what} {text!r} is not an IPv4 address") from None


@dataclass(frozen=True, slots=True)
class NicAddress(Shown):
    """One NIC's IPv4 settings: `address` with `prefix` (and a `gateway`), or DHCP when `address` is None."""

    address: str | None = None
    prefix: int | None = None
    gateway: str | None = None

    def __post_init__(self) -> None:
        check_type(self.address, str, "a recovery NIC's address", optional=True)
        check_type(self.gateway, str, "a recovery NIC's gateway", optional=True)
        if self.address is None:
            if self.prefix is not None or self.gateway is not None:
                raise InvalidInput("a DHCP NIC takes no prefix or gateway")
            return
        _ipv4(self.address, "address")
        if not isinstance(self.prefix, int) or isinstance(self.prefix, bool) or not 1 <= self.prefix <= 32:
            raise InvalidInput(
                f"the address {self.address} needs a prefix length from 1 to 32, not {self.prefix!r}"
            )
        if self.gateway is not None:
            _ipv4(self.gateway, "gateway")
            network = ipaddress.IPv4Network(f"{self.address}/{self.prefix}", strict=False)
            if ipaddress.IPv4Address(self.gateway) not in network:
                raise InvalidInput(
                    f"gateway {self.gateway} is not in {network}, the network of {self.address}"
                )

    @classmethod
    def parse(cls, text: str) -> NicAddress:
        """`dhcp`, or `ADDRESS/PREFIX` and optionally `,gateway=GATEWAY` (CLI and policy files)."""
        check_type(text, str, "a recovery NIC")
        if text.strip().lower() == "dhcp":
            return cls()
        head, _, rest = text.partition(",")
        address, slash, prefix = head.strip().partition("/")
        if not slash or not prefix.isdigit():
            raise InvalidInput(f"recovery NIC {text!r}: give dhcp, or ADDRESS/PREFIX[,gateway=GATEWAY]")
        gateway = None
        if rest:
            key, eq, value = rest.strip().partition("=")
            if key != "gateway" or not eq or not value:
                raise InvalidInput(f"recovery NIC {text!r}: after the address comes only gateway=GATEWAY")
            gateway = value
        return cls(address=address, prefix=int(prefix), gateway=gateway)

    def describe(self) -> str:
        if self.address is None:
            return "dhcp"
        gateway = f",gateway={self.gateway}" if self.gateway else ""
        return f"{self.address}/{self.prefix}{gateway}"


@dataclass(frozen=True, slots=True)
class RecoveryIp(Shown):
    """A VM's addresses on the recovery site: one NicAddress per NIC in device order (the rest DHCP), DNS."""

    nics: tuple[NicAddress, ...] = ()
    dns: tuple[str, ...] = ()
    domain: str = "localdomain"

    def __post_init__(self) -> None:
        check_type(self.nics, tuple, "recovery NICs")
        for nic in self.nics:
            check_type(nic, NicAddress, "a recovery NIC")
        check_type(self.dns, tuple, "recovery DNS servers")
        for server in self.dns:
            _ipv4(server, "DNS server")
        check_type(self.domain, str, "the recovery DNS domain")
        if not self.domain:
            raise InvalidInput("the recovery DNS domain must not be empty")


def _identity(guest_id: str, host: str, ip: RecoveryIp) -> vim.vm.customization.IdentitySettings:
    if guest_id.lower().startswith("win"):
        return vim.vm.customization.Sysprep(
            userData=vim.vm.customization.UserData(
                fullName="vsphere_replicator",
                orgName="vsphere_replicator",
                computerName=vim.vm.customization.FixedName(name=host[:15]),
                productId="",
            ),
            guiUnattended=vim.vm.customization.GuiUnattended(autoLogon=False, autoLogonCount=0, timeZone=85),
            identification=vim.vm.customization.Identification(joinWorkgroup="WORKGROUP"),
        )
    return vim.vm.customization.LinuxPrep(
        hostName=vim.vm.customization.FixedName(name=host), domain=ip.domain
    )


def customize_ip(conn: Connection, vm_moref: str, ip: RecoveryIp, *, host_name: str) -> None:
    """Have the VM come up with `ip` at its next power-on (LinuxPrep or Sysprep, by its guest id).

    The VM is powered off. A customization already pending (an interrupted
    run applied it, then stopped before power-on) is left as it is.
    """
    handle = vm_object(conn, vm_moref)
    config = conn.call("read the VM's devices", lambda: handle.config)
    if config is None:
        raise NotFound(f"VM {vm_moref} has no configuration to customize")
    cards = [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    if len(ip.nics) > len(cards):
        raise InvalidInput(
            f"{len(ip.nics)} recovery NIC settings for a VM with {len(cards)} network adapters", vm=host_name
        )
    adapters = []
    for index, _card in enumerate(cards):
        wanted = ip.nics[index] if index < len(ip.nics) else NicAddress()
        settings = vim.vm.customization.IPSettings()
        if wanted.address is None:
            settings.ip = vim.vm.customization.DhcpIpGenerator()
        else:
            network = ipaddress.IPv4Network(f"{wanted.address}/{wanted.prefix}", strict=False)
            settings.ip = vim.vm.customization.FixedIp(ipAddress=wanted.address)
            settings.subnetMask = str(network.netmask)
            if wanted.gateway:
                settings.gateway = [wanted.gateway]
        adapters.append(vim.vm.customization.AdapterMapping(adapter=settings))
    spec = vim.vm.customization.Specification(
        identity=_identity(str(config.guestId or ""), host_name, ip),
        globalIPSettings=vim.vm.customization.GlobalIPSettings(dnsServerList=list(ip.dns)),
        nicSettingMap=adapters,
    )
    try:
        run_task(conn, lambda: handle.CustomizeVM_Task(spec), what=f"customize {host_name}", vm=host_name)
    except VSphereFault as exc:
        if exc.fault != "CustomizationPending":
            raise
        get_logger(vm=host_name, operation="customize").info("customization_already_pending")
        return
    get_logger(vm=host_name, operation="customize").info(
        "customization_pending", nics=[n.describe() for n in ip.nics], dns=list(ip.dns)
    )
