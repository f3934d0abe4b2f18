"""Failover and failback against the lab, checked with plain pyVmomi and file hashes."""

from __future__ import annotations

import random
from typing import Any

from tests import labutil
from tests.conftest import DISK_SIZE, lab_vddk
from tests.replication_util import (
    all_vms,
    chain_hashes,
    find,
    our_source_snapshots,
    point_hashes,
    snapshots,
    source_hashes,
    state,
)
from vsphere_replicator.replication import CycleSettings, ReplicaTarget, protect, replicate
from vsphere_replicator.replication.failback import failback
from vsphere_replicator.replication.failover import (
    cleanup_test_failover,
    planned_failover,
    start_test_failover,
    unplanned_failover,
)
from vsphere_replicator.replication.restore_points import verify_restore_point

TARGET = ReplicaTarget(datastore="secondary-ds", networks=(("VM Network", "DR Network"),))


def nic_networks(vm: Any) -> list[str]:
    """Each NIC's port group, by name, as plain pyVmomi sees it."""
    from pyVmomi import vim

    names = []
    for device in vm.config.hardware.device:
        if isinstance(device, vim.vm.device.VirtualEthernetCard):
            backing = device.backing
            if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
                key = backing.port.portgroupKey
                names.append(next(n.name for n in vm.network if getattr(n, "key", None) == key))
            else:
                assert isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo)
                names.append(backing.deviceName)
    return names


def writes(control: Any, vm: str, seed: int) -> None:
    rng = random.Random(seed)
    for disk in (0, 1, 0):
        length = rng.choice([4096, 70_000, 300_000])
        control.write_random(
            vm, offset=rng.randrange(0, DISK_SIZE - length), length=length, seed=seed, disk=disk
        )


def nic_connections(vm: Any) -> list[tuple[bool, bool]]:
    """Each NIC's (connected, startConnected), as plain pyVmomi sees it."""
    from pyVmomi import vim

    found = []
    for device in vm.config.hardware.device:
        if isinstance(device, vim.vm.device.VirtualEthernetCard):
            connectable: Any = device.connectable
            found.append((connectable.connected, connectable.startConnected))
    return found


def test_test_failover_runs_an_isolated_copy_and_leaves_source_and_replication_untouched(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str
) -> None:
    access = lab_vddk(conn)
    writes(control, vm_name, 1)
    protect(conn, vm_name, TARGET, settings=CycleSettings(keep=2))
    writes(control, vm_name, 2)
    replicate(conn, vm_name, replica_access=access)
    replica = find(si, f"{vm_name}-replica")
    before = state(replica)
    source_before = source_hashes(lab, find(si, vm_name))

    result = start_test_failover(conn, vm_name, restore_point="rp-000001")
    copy = find(si, result.running)
    assert copy.runtime.powerState == "poweredOn"
    # Isolated by default: no test network mapped, so the NIC is off every network, not on production's.
    assert nic_connections(copy) == [(False, False)] and [n.new for n in result.nics] == ["(disconnected)"]
    assert nic_networks(find(si, f"{vm_name}-replica")) == ["VM Network"]
    # A linked clone: redo logs over the restore point's disks, holding what the test writes only.
    assert all(d.backing.parent is not None and d.backing.deltaDiskFormat for d in labutil.disks(copy))
    assert chain_hashes(lab, copy) == point_hashes(lab, replica, "rp-000001")
    assert state(find(si, f"{vm_name}-replica")) == before
    assert find(si, f"{vm_name}-replica").runtime.powerState == "poweredOff"
    assert source_hashes(lab, find(si, vm_name)) == source_before
    assert (
        find(si, vm_name).runtime.powerState == "poweredOn" and our_source_snapshots(find(si, vm_name)) == []
    )

    mapped = start_test_failover(
        conn,
        vm_name,
        restore_point="rp-000002",
        name="{vm}-test-net",
        test_networks={"VM Network": "DR Network"},
    )
    on_test_net = find(si, mapped.running)
    assert nic_networks(on_test_net) == ["DR Network"] and nic_connections(on_test_net) == [(True, True)]

    for seed in (3, 4):
        writes(control, vm_name, seed)
        replicate(conn, vm_name, replica_access=access)  # replication carries on meanwhile
    kept = [p["id"] for p in state(find(si, f"{vm_name}-replica"))["restore_points"]]
    assert kept == ["rp-000001", "rp-000002", "rp-000003", "rp-000004"]  # keep=2, but both are tested
    assert sorted(cleanup_test_failover(conn, vm_name)) == sorted([result.running, mapped.running])
    assert all(v.name not in (result.running, mapped.running) for v in all_vms(si))
    writes(control, vm_name, 5)
    replicate(conn, vm_name, replica_access=access)
    kept = [p["id"] for p in state(find(si, f"{vm_name}-replica"))["restore_points"]]
    assert kept == ["rp-000004", "rp-000005"]  # released: retention applies again


def test_unplanned_failover_brings_the_replica_up_at_the_chosen_point_without_touching_the_source(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str
) -> None:
    access = lab_vddk(conn)
    writes(control, vm_name, 4)
    protect(conn, vm_name, ReplicaTarget(datastore="secondary-ds", networks=(("VM Network", "DC0_DVPG0"),)))
    first = point_hashes(lab, find(si, f"{vm_name}-replica"), "rp-000001")
    writes(control, vm_name, 5)
    replicate(conn, vm_name, replica_access=access)
    source_before = source_hashes(lab, find(si, vm_name))

    result = unplanned_failover(conn, vm_name, restore_point="rp-000001", force=True)
    replica = find(si, result.running)
    assert replica.runtime.powerState == "poweredOn"
    assert source_hashes(lab, replica) == first
    assert snapshots(replica) == []
    assert state(replica)["promoted"] is True
    assert nic_networks(replica) == ["DC0_DVPG0"] and [n.new for n in result.nics] == ["DC0_DVPG0"]
    source = find(si, vm_name)
    assert source.runtime.powerState == "poweredOn" and source_hashes(lab, source) == source_before


def test_planned_failover_then_failback_ends_with_the_original_byte_exact_and_running(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str
) -> None:
    access = lab_vddk(conn)
    writes(control, vm_name, 6)
    protect(conn, vm_name, TARGET, settings=CycleSettings(verify=True), replica_access=access)
    writes(control, vm_name, 7)
    replicate(conn, vm_name, replica_access=access)
    writes(control, vm_name, 8)  # written after the last cycle: the planned failover must carry it

    result = planned_failover(conn, vm_name, replica_access=access)
    source, replica = find(si, vm_name), find(si, result.running)
    assert source.runtime.powerState == "poweredOff" and replica.runtime.powerState == "poweredOn"
    assert source_hashes(lab, replica) == source_hashes(lab, source)
    assert our_source_snapshots(source) == [] and snapshots(replica) == []
    assert nic_networks(replica) == ["DR Network"] and nic_networks(source) == ["VM Network"]
    # The clone got a MAC of its own; the source's was generated by ESXi, so no NIC can take it by hand.
    assert [(m.kept, "ESXi" in (m.reason or "")) for m in result.macs] == [(False, True)]

    writes(control, replica.name, 9)  # production now runs on the replica
    expected = source_hashes(lab, replica)
    back = failback(conn, vm_name, replica_access=access)
    assert back is not None
    original, replica = find(si, vm_name), find(si, f"{vm_name}-replica")
    assert back.running == vm_name
    assert original.runtime.powerState == "poweredOn" and replica.runtime.powerState == "poweredOff"
    assert source_hashes(lab, original) == expected == source_hashes(lab, replica)
    assert our_source_snapshots(original) == [] and our_source_snapshots(replica) == []
    assert nic_networks(original) == ["VM Network"]  # the reverse mapping brought it home
    # Protection is back in its first direction: the next cycle is an ordinary incremental.
    assert state(replica)["source"]["name"] == vm_name and not state(replica)["promoted"]
    assert state(replica)["target"]["networks"] == [["VM Network", "DR Network"]]
    assert verify_restore_point(conn, vm_name, access, "rp-000001").ok  # verify carried through
    writes(control, vm_name, 10)
    cycle = replicate(conn, vm_name, replica_access=access)
    assert cycle.full_resync == () and cycle.restore_point == "rp-000002"
    assert point_hashes(lab, find(si, f"{vm_name}-replica"), "rp-000002") == source_hashes(
        lab, find(si, vm_name)
    )


def test_failback_after_an_unplanned_failover_to_an_older_point_leaves_no_stale_bytes(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str
) -> None:
    from pyVim.task import WaitForTask

    access = lab_vddk(conn)
    protect(conn, vm_name, TARGET)
    control.write_random(vm_name, offset=16 << 20, length=1 << 20, seed=10)
    replicate(conn, vm_name, replica_access=access)  # rp-000002
    control.write_random(vm_name, offset=17 << 20, length=1 << 20, seed=11)
    replicate(conn, vm_name, replica_access=access)  # rp-000003: on the original, not in rp-000002
    result = unplanned_failover(conn, vm_name, restore_point="rp-000002", force=True)
    WaitForTask(find(si, vm_name).PowerOffVM_Task())  # the old site comes back, powered off
    control.write_random(result.running, offset=20 << 20, length=1 << 20, seed=12)
    expected = source_hashes(lab, find(si, result.running))
    failback(conn, vm_name, replica_access=access)
    assert source_hashes(lab, find(si, vm_name)) == expected
