"""Two vCenters: protect from site A into site B, replicate, lose site A, recover on site B alone.

Site A and site B are two labs, each its own vCenter (port, certificate,
session). The replica is created on B and filled through VDDK (no mount on
either side); everything recovery needs is on B, so once A's lab is stopped
the restore points, a test failover and the unplanned failover run against
B alone. Checked with plain pyVmomi on each site and qemu-img on the chains.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from tests.conftest import lab_connection
from tests.replication_util import (
    STATE_KEY,
    all_vms,
    chain_hashes,
    find,
    option,
    our_source_snapshots,
    point_chain_hashes,
    snapshots,
    state,
)
from tests.test_failover import nic_networks
from tests.test_vddk import nbdkit_processes
from vsphere_replicator.customize import NicAddress, RecoveryIp
from vsphere_replicator.errors import ConnectionFailed, InvalidInput
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, start_lab, stop_lab, vddk_standin
from vsphere_replicator.replication import ReplicaTarget, Sites, VDDKDisks, failpoints, protect, replicate
from vsphere_replicator.replication.failback import failback
from vsphere_replicator.replication.failover import (
    cleanup_test_failover,
    planned_failover,
    start_test_failover,
    unplanned_failover,
)
from vsphere_replicator.replication.restore_points import list_restore_points

pytestmark = pytest.mark.lab

MIB = 1 << 20
VM = "lab-vm-0003"
# Site B is another vCenter: its own datacenter, datastores and port groups (lab up --site B).
RECOVERY_IP = RecoveryIp(nics=(NicAddress.parse("10.20.0.15/24,gateway=10.20.0.1"),), dns=("10.20.0.2",))
TARGET = ReplicaTarget(
    datastore="secondary-ds-b", networks=(("VM Network", "DR Network B"),), recovery_ip=RECOVERY_IP
)


def guest_addresses(vm: Any) -> list[str]:
    """What the guest reports (VMware Tools): its addresses, as plain pyVmomi reads them."""
    return [a for nic in vm.guest.net or [] for a in nic.ipAddress or []]


@pytest.fixture(scope="module")
def site_b() -> Iterator[LabInfo]:
    with running_lab(site="B", vms=0, disk_size=32 * MIB) as info:
        yield info


def vddk(conn: Any, libdir: str) -> VDDKDisks:
    return VDDKDisks(conn, plugin=str(vddk_standin()), libdir=libdir)


def test_protect_replicate_recover_on_site_b_with_site_a_gone_then_fail_back_to_a_fresh_site_a(
    site_b: LabInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site_a_dir = Path(tempfile.mkdtemp(prefix="vr-site-a-"))
    site_a = start_lab(site_a_dir, vms=4, disks_per_vm=2, disk_size=32 * MIB)
    si_a, si_b = labutil.connect(site_a), labutil.connect(site_b)
    try:
        control = LabControl(site_a)
        control.write_random(VM, offset=3 * MIB, length=900_000, seed=1, disk=0)
        control.write_random(VM, offset=7 * MIB, length=400_000, seed=2, disk=1)
        with lab_connection(site_a) as conn_a, lab_connection(site_b) as conn_b:
            sites = Sites(source=conn_a, target=conn_b)
            reader, writer = vddk(conn_a, str(tmp_path)), vddk(conn_b, str(tmp_path))
            seeded = protect(sites, VM, TARGET, replica_access=writer, source_access=reader)
            replica = find(si_b, f"{VM}-replica")
            assert all(vm.name != replica.name for vm in all_vms(si_a))  # nothing of it on site A
            assert len(labutil.disks(replica)) == 2 and nic_networks(replica) == ["DR Network B"]
            assert point_chain_hashes(site_b, replica, seeded.restore_point) == chain_hashes(
                site_a, find(si_a, VM)
            )
            points = {seeded.restore_point: chain_hashes(site_a, find(si_a, VM))}
            for seed in (3, 4):
                control.write_random(VM, offset=seed * MIB, length=300_000, seed=seed, disk=seed % 2)
                cycle = replicate(sites, VM, replica_access=writer, source_access=reader)
                assert cycle.full_resync == () and 0 < cycle.bytes_moved < 4 * MIB
                points[cycle.restore_point] = chain_hashes(site_a, find(si_a, VM))
                replica = find(si_b, f"{VM}-replica")
                assert point_chain_hashes(site_b, replica, cycle.restore_point) == points[cycle.restore_point]
            assert our_source_snapshots(find(si_a, VM)) == []
            recorded = state(find(si_b, f"{VM}-replica"))
            assert [p["id"] for p in recorded["restore_points"]] == list(points)

            test = start_test_failover(conn_b, VM)  # on site B, while site A runs
            copy = find(si_b, test.running)
            assert copy.runtime.powerState == "poweredOn" and copy.guest.ipAddress == "10.20.0.15"
            assert [n.new for n in test.nics] == ["(disconnected)"]  # isolated: no test network mapped
            assert chain_hashes(site_b, copy) == points[test.restore_point]
            assert cleanup_test_failover(conn_b, VM) == (test.running,)

        stop_lab(site_a_dir)  # the primary site is lost
        labutil.disconnect(si_a)
        si_a = None
        with pytest.raises(ConnectionFailed), lab_connection(site_a):
            pass  # its vCenter really is gone
        with lab_connection(site_b) as conn_b:
            assert [p.id for p in list_restore_points(conn_b, VM)] == list(points)
            chosen = list(points)[1]
            result = unplanned_failover(conn_b, VM, restore_point=chosen)
        running = find(si_b, result.running)
        assert result.restore_point == chosen and running.runtime.powerState == "poweredOn"
        assert running.guest.ipAddress == "10.20.0.15" and "10.20.0.15" in guest_addresses(running)
        assert chain_hashes(site_b, running) == points[chosen]
        assert [n.name for n in snapshots(running)] == []  # restore points go once the VM runs

        # Production writes on site B; then a fresh site A comes up (a new vCenter, no VM of its own).
        LabControl(site_b).write_random(result.running, offset=9 * MIB, length=500_000, seed=11, disk=1)
        latest_on_b = chain_hashes(site_b, running)
        fresh_dir = Path(tempfile.mkdtemp(prefix="vr-site-a-fresh-"))
        fresh = start_lab(fresh_dir, vms=0, disk_size=32 * MIB)
        si_a = labutil.connect(fresh)
        _fail_back_to_a_fresh_site(fresh, site_b, si_a, si_b, tmp_path, latest_on_b)
        assert "protection_restored" in caplog.text  # the log is captured, and
        assert "failback_whole_disk" not in caplog.text  # once seeded, every copy was CBT-based
        stop_lab(fresh_dir)
    finally:
        if si_a is not None:
            labutil.disconnect(si_a)
        labutil.disconnect(si_b)
        stop_lab(site_a_dir)
        if "fresh_dir" in locals():
            stop_lab(fresh_dir)


def nic_macs(vm: Any) -> list[tuple[Any, Any]]:
    """Each NIC's (addressType, macAddress), as plain pyVmomi sees them."""
    return [
        (d.addressType, d.macAddress)
        for d in vm.config.hardware.device
        if isinstance(d, vim.vm.device.VirtualEthernetCard)
    ]


def set_static_mac(vm: Any, mac: str) -> None:
    """Give the (powered-off) VM's first NIC a static ("manual") MAC address, with plain pyVmomi."""
    nic = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard))
    nic.addressType, nic.macAddress = "manual", mac
    edit = vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)
    labutil.wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[edit])))


def _fail_back_to_a_fresh_site(
    fresh: LabInfo, site_b: LabInfo, si_a: Any, si_b: Any, tmp_path: Path, latest_on_b: list[str]
) -> None:
    """Fail back into a fresh site A: the original made anew there, then protected into B again by CBT."""
    with lab_connection(fresh) as conn_a, lab_connection(site_b) as conn_b:
        sites = Sites(source=conn_a, target=conn_b)
        reader, writer = vddk(conn_a, str(tmp_path)), vddk(conn_b, str(tmp_path))
        with pytest.raises(InvalidInput, match="datastore"):  # refused before anything changes
            failback(sites, VM, replica_access=writer, source_access=reader)
        assert all_vms(si_a) == [] and snapshots(find(si_b, f"{VM}-replica")) == []
        for crash_at in ("seed-snapshot-taken:1", "seed-copied:1", "failback-reversed:1"):
            with failpoints.armed(crash_at), pytest.raises(failpoints.Crash):  # killed mid-way: run again
                failback(sites, VM, replica_access=writer, source_access=reader, datastore="primary-ds")
        back = failback(sites, VM, replica_access=writer, source_access=reader, datastore="primary-ds")
        assert back is not None and back.resumed
        assert back is not None and back.running == VM and back.final_cycle is not None
        assert back.final_cycle.full_resync == () and back.final_cycle.bytes_moved < MIB  # CBT after the seed
        b_mac = nic_macs(find(si_b, f"{VM}-replica"))[0][
            1
        ]  # generated by site B's ESXi: not to be set by hand
        assert [(m.mac, m.kept) for m in back.macs] == [(b_mac, False)] and "ESXi" in (
            back.macs[0].reason or ""
        )
        original, replica = find(si_a, VM), find(si_b, f"{VM}-replica")
        assert original.runtime.powerState == "poweredOn" and replica.runtime.powerState == "poweredOff"
        assert nic_networks(original) == ["VM Network"] and nic_networks(replica) == ["DR Network B"]
        assert chain_hashes(fresh, original) == latest_on_b  # the VM runs on A with B's latest bytes
        assert point_chain_hashes(site_b, replica, back.restore_point) == latest_on_b
        recorded = state(replica)  # protected in the original direction again: A -> B, points on B
        assert recorded["source"]["instance_uuid"] == original.config.instanceUuid
        assert not recorded.get("promoted") and [p["id"] for p in recorded["restore_points"]] == [
            back.restore_point
        ]
        assert our_source_snapshots(original) == [] and option(original, STATE_KEY) in (None, "")

        LabControl(fresh).write_random(VM, offset=2 * MIB, length=300_000, seed=12, disk=0)
        cycle = replicate(sites, VM, replica_access=writer, source_access=reader)
        assert (
            cycle.full_resync == () and 300_000 <= cycle.bytes_moved <= 300_000 + 2 * 65536
        )  # CBT: ≈ written
        replica = find(si_b, f"{VM}-replica")
        assert point_chain_hashes(site_b, replica, cycle.restore_point) == chain_hashes(fresh, find(si_a, VM))
    assert our_source_snapshots(find(si_a, VM)) == []
    for vm in all_vms(si_b):  # nothing of ours but the replica's restore points on B
        assert our_source_snapshots(vm) == [], vm.name
    assert len(snapshots(find(si_b, f"{VM}-replica"))) == 2  # the failback's point and the cycle's
    assert nbdkit_processes(fresh.port) == {} and nbdkit_processes(site_b.port) == {}


def test_a_seed_into_another_vcenter_needs_a_data_path_and_its_port_groups(site_b: LabInfo) -> None:
    with running_lab(vms=2, disk_size=32 * MIB) as site_a:
        with lab_connection(site_a) as conn_a, lab_connection(site_b) as conn_b:
            sites = Sites(source=conn_a, target=conn_b)
            with pytest.raises(InvalidInput, match="replica_access"):
                protect(sites, "lab-vm-0002", TARGET)
            writer = vddk(conn_b, tempfile.gettempdir())
            elsewhere = ReplicaTarget(datastore="secondary-ds-b", networks=(("VM Network", "Nowhere"),))
            with pytest.raises(InvalidInput, match="Nowhere"):
                protect(sites, "lab-vm-0002", elsewhere, replica_access=writer)
        si_a = labutil.connect(site_a)
        try:
            assert snapshots(find(si_a, "lab-vm-0002")) == []  # refused before anything changed
        finally:
            labutil.disconnect(si_a)


def test_a_planned_failover_across_vcenters_then_failback_to_the_original(
    site_b: LabInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync on site A, power the source off there, sync what is left, bring the replica up on site B.

    Then fail back to the original, still on site A.
    """
    vm = "lab-vm-0002"
    with running_lab(vms=2, disks_per_vm=2, disk_size=32 * MIB) as site_a:
        si_a, si_b = labutil.connect(site_a), labutil.connect(site_b)
        try:
            with lab_connection(site_a) as conn_a, lab_connection(site_b) as conn_b:
                sites = Sites(source=conn_a, target=conn_b)
                reader, writer = vddk(conn_a, str(tmp_path)), vddk(conn_b, str(tmp_path))
                original = find(si_a, vm)
                labutil.wait(original.PowerOffVM_Task())
                set_static_mac(original, "00:50:56:80:00:2a")  # vCenter's own range: ESXi will not start it
                with pytest.raises(vim.fault.GenericVmConfigFault, match="not an allowed static Ethernet"):
                    labutil.wait(original.PowerOnVM_Task())
                set_static_mac(original, "00:50:56:3f:00:2a")  # the highest static range: allowed
                labutil.wait(original.PowerOnVM_Task())
                protect(sites, vm, TARGET, replica_access=writer, source_access=reader)
                assert nic_macs(find(si_b, f"{vm}-replica"))[0][1] != "00:50:56:3f:00:2a"  # site B's own
                LabControl(site_a).write_random(vm, offset=5 * MIB, length=600_000, seed=9, disk=1)
                result = planned_failover(sites, vm, replica_access=writer, source_access=reader)
            source, running = find(si_a, vm), find(si_b, result.running)
            assert source.runtime.powerState == "poweredOff" and running.runtime.powerState == "poweredOn"
            assert result.final_cycle is not None  # the sync after the source stopped ran, on site A's data
            assert chain_hashes(site_b, running) == chain_hashes(site_a, source)
            assert nic_networks(running) == ["DR Network B"] and our_source_snapshots(source) == []
            assert nic_macs(running) == [("manual", "00:50:56:3f:00:2a")]  # the source's MAC, kept
            assert [(m.label, m.mac, m.kept) for m in result.macs] == [
                ("Network adapter 1", "00:50:56:3f:00:2a", True)
            ]

            # Site A still has the original: failback reuses it, copying only what differs (CBT).
            LabControl(site_b).write_random(result.running, offset=8 * MIB, length=700_000, seed=10, disk=0)
            latest_on_b = chain_hashes(site_b, running)
            with lab_connection(site_a) as conn_a, lab_connection(site_b) as conn_b:
                sites = Sites(source=conn_a, target=conn_b)
                reader, writer = vddk(conn_a, str(tmp_path)), vddk(conn_b, str(tmp_path))
                with failpoints.armed("failback-switched:1"), pytest.raises(failpoints.Crash):
                    failback(sites, vm, replica_access=writer, source_access=reader)  # killed: run again
                back = failback(sites, vm, replica_access=writer, source_access=reader)
            source, replica = find(si_a, vm), find(si_b, result.running)
            assert back is not None and back.resumed
            assert source.config.instanceUuid == state(replica)["source"]["instance_uuid"]
            assert source.runtime.powerState == "poweredOn" and replica.runtime.powerState == "poweredOff"
            assert (
                chain_hashes(site_a, source)
                == latest_on_b
                == point_chain_hashes(site_b, replica, back.restore_point)
            )
            assert "protection_restored" in caplog.text and "failback_whole_disk" not in caplog.text
            assert nic_macs(source) == [("manual", "00:50:56:3f:00:2a")]
            assert our_source_snapshots(source) == [] and our_source_snapshots(replica) == []
        finally:
            labutil.disconnect(si_a)
            labutil.disconnect(si_b)
