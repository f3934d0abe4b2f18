"""Two sites: `lab up --site B` is another vCenter, checked with plain pyVmomi.

One default-site lab and one site-B lab serve the whole module; the CLI test
starts and stops a third (site R, no VMs) while both keep serving.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.lab import LabInfo, running_lab, vddk_standin
from vsphere_replicator.lab.process import default_state_dir, lab_status, site_names

pytestmark = pytest.mark.lab

DISK = 4 << 20


@pytest.fixture(scope="module")
def site_a() -> Iterator[LabInfo]:
    with running_lab(vms=2, disk_size=DISK, hosts=1) as info:
        yield info


@pytest.fixture(scope="module")
def site_b() -> Iterator[LabInfo]:
    with running_lab(site="B", vms=2, disk_size=DISK, hosts=2) as info:
        yield info


def nic_networks(vm: Any) -> list[str]:
    """What each network adapter's summary names: its port group."""
    return [d.deviceInfo.summary for d in vm.config.hardware.device if hasattr(d, "macAddress")]


def disk_files(vm: Any) -> list[str]:
    return [d.backing.fileName for d in vm.config.hardware.device if hasattr(d, "capacityInBytes")]


def inventory(info: LabInfo) -> dict[str, Any]:
    """Names and identities as a pyVmomi script sees them."""
    si = labutil.connect(info)
    try:
        content = si.RetrieveContent()

        def names(kind: Any) -> set[str]:
            view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
            try:
                return {o.name for o in view.view}
            finally:
                view.Destroy()

        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        vms = {
            vm.name: (
                vm.config.uuid,
                vm.config.instanceUuid,
                nic_networks(vm),
                disk_files(vm),
            )
            for vm in view.view
        }
        view.Destroy()
        return {
            "instance_uuid": content.about.instanceUuid,
            "datacenters": names(vim.Datacenter),
            "clusters": names(vim.ClusterComputeResource),
            "hosts": names(vim.HostSystem),
            "datastores": names(vim.Datastore),
            "networks": names(vim.Network),
            "vms": vms,
        }
    finally:
        labutil.disconnect(si)


def test_site_b_is_another_vcenter_with_names_of_its_own(site_a: LabInfo, site_b: LabInfo) -> None:
    a, b = inventory(site_a), inventory(site_b)
    assert (site_a.site, site_b.site) == ("", "B")
    assert site_a.instance_uuid == a["instance_uuid"] and site_b.instance_uuid == b["instance_uuid"]
    assert a["instance_uuid"] != b["instance_uuid"]
    assert (site_a.port, site_a.password, site_a.ca_file) != (site_b.port, site_b.password, site_b.ca_file)
    assert Path(site_a.ca_file).read_bytes() != Path(site_b.ca_file).read_bytes()
    # The default site is exactly as before; site B is named after itself.
    assert a["datacenters"] == {"DC0"} and a["datastores"] == {"primary-ds", "secondary-ds"}
    assert {"VM Network", "DR Network"} <= a["networks"]
    assert set(a["vms"]) == {"lab-vm-0001", "lab-vm-0002"}
    assert b["datacenters"] == {"DC-B"} and site_b.datacenter == "DC-B"
    assert b["clusters"] == {"DC-B_C0"} and b["hosts"] == {"DC-B_C0_H0", "DC-B_C0_H1"}
    assert b["datastores"] == {"primary-ds-b", "secondary-ds-b"} == set(site_b.datastores)
    assert {"VM Network B", "DR Network B"} <= b["networks"]
    assert not {"VM Network", "DR Network"} & b["networks"]
    assert set(b["vms"]) == {"lab-b-vm-0001", "lab-b-vm-0002"}
    for kind in ("datacenters", "clusters", "hosts", "datastores"):
        assert not a[kind] & b[kind], kind
    uuids_a = {u for vm in a["vms"].values() for u in vm[:2]}
    uuids_b = {u for vm in b["vms"].values() for u in vm[:2]}
    assert len(uuids_b) == 4 and not uuids_a & uuids_b
    nics, disks = b["vms"]["lab-b-vm-0001"][2:]
    assert nics == ["VM Network B"]
    assert disks == ["[primary-ds-b] lab-b-vm-0001/lab-b-vm-0001.vmdk"]
    names = site_names("B")
    assert (names["datacenter"], names["vm_network"], names["primary_datastore"]) == (
        "DC-B",
        "VM Network B",
        "primary-ds-b",
    )


def test_site_b_serves_its_inventory_paths_and_data(site_b: LabInfo) -> None:
    si = labutil.connect(site_b)
    try:
        vm = si.content.searchIndex.FindByInventoryPath("DC-B/vm/lab-b-vm-0002")
        assert vm is not None and vm.runtime.powerState == "poweredOn"
        assert si.content.searchIndex.FindByInventoryPath("DC0/vm/lab-vm-0002") is None
        host = vm.runtime.host
        assert {pg.spec.name for pg in host.config.network.portgroup} >= {"VM Network B", "DR Network B"}
        assert {n.name for n in host.network} >= {"VM Network B", "DR Network B"}
    finally:
        labutil.disconnect(si)
    extent = Path(site_b.datastores["primary-ds-b"]) / "lab-b-vm-0002" / "lab-b-vm-0002-flat.vmdk"
    assert extent.stat().st_size == DISK


def test_site_names_are_checked_before_a_lab_starts() -> None:
    assert site_names(None)["datacenter"] == site_names("")["datacenter"] == "DC0"  # the default site
    for bad in ("-B", "a b", "x" * 17, "../up", 7):
        with pytest.raises(InvalidInput):
            site_names(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            running_lab(site=bad).__enter__()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsphere_replicator.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


def test_lab_up_site_with_no_vms_then_down_leaves_the_other_sites_serving(
    tmp_path: Path, site_a: LabInfo, site_b: LabInfo
) -> None:
    env = {**os.environ, "VR_LAB_STATE_DIR": str(tmp_path / "lab")}
    up = cli(env, "lab", "up", "--site", "R", "--vms", "0", "--hosts", "1", "--disk-size", "4M")
    assert up.returncode == 0, up.stderr
    info = LabInfo.from_json(up.stdout.strip())
    try:
        assert info.site == "R" and Path(info.state_dir) == tmp_path / "lab-site-R"
        status = cli(env, "lab", "status", "--site", "R")
        assert status.returncode == 0 and LabInfo.from_json(status.stdout) == info
        assert cli(env, "lab", "status").returncode == 1  # no default-site lab in that directory
        exported = cli(env, "lab", "env", "--site", "R", "--as", "target")
        assert exported.returncode == 0, exported.stderr
        values = {}
        for line in exported.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0]
        assert values == {
            "VSPHERE_TARGET_HOST": info.host,
            "VSPHERE_TARGET_PORT": str(info.port),
            "VSPHERE_TARGET_USER": info.user,
            "VSPHERE_TARGET_PASSWORD": info.password,
            "VSPHERE_TARGET_CA_FILE": info.ca_file,
            "VSPHERE_REPLICATOR_TARGET_MOUNTS": ",".join(f"{k}={v}" for k, v in info.datastores.items()),
            # The data path serves both sites alike: VDDK through the lab's stand-in, never a role's.
            "VSPHERE_REPLICATOR_TRANSPORT": "vddk",
            "VSPHERE_REPLICATOR_VDDK_PLUGIN": str(vddk_standin()),
        }
        assert set(info.datastores) == {"primary-ds-r", "secondary-ds-r"}
        si = labutil.connect(info)
        try:
            content = si.RetrieveContent()
            view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
            assert list(view.view) == []
            assert content.about.instanceUuid not in (site_a.instance_uuid, site_b.instance_uuid)
        finally:
            labutil.disconnect(si)
        source = cli(env, "lab", "env", "--site", "R", "--as", "source")
        assert f"export VSPHERE_SOURCE_PORT={info.port}\n" in source.stdout
    finally:
        down = cli(env, "lab", "down", "--site", "R")
    assert down.returncode == 0, down.stderr
    assert lab_status(tmp_path / "lab-site-R") is None
    # The other vCenters never noticed.
    for other in (site_a, site_b):
        si = labutil.connect(other)
        try:
            assert si.RetrieveContent().about.instanceUuid == other.instance_uuid
        finally:
            labutil.disconnect(si)


def test_stopping_site_a_leaves_site_b_serving(site_b: LabInfo) -> None:
    with running_lab(vms=1, disk_size=DISK, hosts=1) as a:
        si_b = labutil.connect(site_b)
    # Site A's lab is gone: its port refuses, site B still answers the session opened while both ran.
    with pytest.raises(OSError):
        labutil.connect(a)
    try:
        vm = si_b.content.searchIndex.FindByInventoryPath("DC-B/vm/lab-b-vm-0001")
        assert vm is not None and vm.summary.runtime.powerState == "poweredOn"
    finally:
        labutil.disconnect(si_b)


def test_default_state_dir_of_a_site_is_a_sibling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VR_LAB_STATE_DIR", str(tmp_path / "lab"))
    assert default_state_dir() == tmp_path / "lab"
    assert default_state_dir("B") == tmp_path / "lab-site-B"
