"""A recovery plan across two vCenters: 3 VMs in tiers, one consistency group, re-IP, site A lost.

Site A (a lab) runs the VMs; site B (`lab up --site B`, another vCenter) holds
the replicas. The plan is recorded with each replica, so after site A's lab
is stopped the plan is found and brought up on site B alone: tier by tier,
at one consistency group's restore points chosen by time, with the guest
reporting its recovery address. Bytes are compared with what site A's disks
held when each group was taken (qemu-img on the chains), states through
plain pyVmomi. Then a fresh site A comes up and the plan fails back into it
(`failback_plan`): each VM made anew there with site B's latest bytes, and
protected into B again, the next cycle incremental.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import labutil
from tests.conftest import lab_connection
from tests.replication_util import chain_hashes, find, our_source_snapshots, point_chain_hashes, state
from tests.test_failover import nic_networks
from tests.test_notebook_reprs import replica_state
from vsphere_replicator.customize import NicAddress, RecoveryIp
from vsphere_replicator.errors import NotFound, TaskTimedOut
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, start_lab, stop_lab, vddk_standin
from vsphere_replicator.replication import ReplicaTarget, Sites, VDDKDisks, protect
from vsphere_replicator.replication.plans import failback_plan, failover_plan, recovery_points, replicate_plan
from vsphere_replicator.replication.settings import PlanMembership
from vsphere_replicator.replication.state import RestorePoint

pytestmark = pytest.mark.lab

MIB = 1 << 20
PLAN = "erp"
TIERS = {"lab-vm-0001": 1, "lab-vm-0002": 2, "lab-vm-0003": 2}  # the database first, then its app servers


def target(vm: str) -> ReplicaTarget:
    address = f"10.30.0.{10 + int(vm[-1])}"
    return ReplicaTarget(
        datastore="secondary-ds-b",
        networks=(("VM Network", "DR Network B"),),
        recovery_ip=RecoveryIp(
            nics=(NicAddress.parse(f"{address}/24,gateway=10.30.0.1"),), dns=("10.30.0.2",)
        ),
        plan=PlanMembership(name=PLAN, tier=TIERS[vm], consistency_group=True),
    )


@pytest.fixture(scope="module")
def site_b() -> Iterator[LabInfo]:
    with running_lab(site="B", vms=0, disk_size=32 * MIB) as info:
        yield info


def test_a_plan_comes_up_on_site_b_at_one_group_point_with_site_a_gone_then_fails_back_to_a_fresh_a(
    site_b: LabInfo, tmp_path: Path
) -> None:
    site_a_dir = Path(tempfile.mkdtemp(prefix="vr-site-a-"))
    site_a = start_lab(site_a_dir, vms=3, disks_per_vm=2, disk_size=32 * MIB)
    si_a, si_b = labutil.connect(site_a), labutil.connect(site_b)
    control = LabControl(site_a)
    groups: list[tuple[str, dict[str, list[str]], Any]] = []  # (group, bytes per VM, its time)
    try:
        with lab_connection(site_a) as conn_a, lab_connection(site_b) as conn_b:
            sites = Sites(source=conn_a, target=conn_b)
            reader = VDDKDisks(conn_a, plugin=str(vddk_standin()), libdir=str(tmp_path))
            writer = VDDKDisks(conn_b, plugin=str(vddk_standin()), libdir=str(tmp_path))
            for vm in TIERS:
                protect(sites, vm, target(vm), replica_access=writer, source_access=reader)
            for seed in (1, 2):
                for vm in TIERS:
                    control.write_random(vm, offset=seed * 3 * MIB, length=250_000, seed=seed, disk=seed % 2)
                made = replicate_plan(sites, PLAN, replica_access=writer, source_access=reader)
                assert made.failed == () and len(made.cycles) == 3 and made.group is not None
                points = {c.vm: c.restore_point for c in made.cycles}
                created = [c.created for c in made.cycles]
                assert max(created) - min(created) < timedelta(seconds=30)  # one short window
                groups.append(
                    (made.group, {vm: chain_hashes(site_a, find(si_a, vm)) for vm in TIERS}, max(created))
                )
                for vm in TIERS:
                    recorded = state(find(si_b, f"{vm}-replica"))["restore_points"]
                    assert {p["id"]: p.get("group") for p in recorded}[points[vm]] == made.group
            assert all(our_source_snapshots(find(si_a, vm)) == [] for vm in TIERS)
            control.write_random(
                "lab-vm-0001", offset=20 * MIB, length=100_000, seed=7
            )  # after the last group

        stop_lab(site_a_dir)  # site A is lost
        labutil.disconnect(si_a)
        si_a = None
        chosen_group, expected, at = groups[0]  # back to the first group's moment
        LabControl(site_b).set_tools("lab-vm-0001-replica", "notRunning")
        with lab_connection(site_b) as conn_b:
            with pytest.raises(TaskTimedOut, match="tier 1"):
                failover_plan(conn_b, PLAN, kind="unplanned", at=at, tools_timeout=2)
            # Tier 2 waited for tier 1's guest: it is still off.
            assert find(si_b, "lab-vm-0001-replica").runtime.powerState == "poweredOn"
            assert {
                find(si_b, f"{vm}-replica").runtime.powerState for vm in ("lab-vm-0002", "lab-vm-0003")
            } == {"poweredOff"}
            LabControl(site_b).set_tools("lab-vm-0001-replica", "running")
            # Run again without `at`: it goes on at the group tier 1 came up at, not at the newest one.
            result = failover_plan(conn_b, PLAN, kind="unplanned", tools_timeout=30)
        assert result.tiers == (("lab-vm-0001",), ("lab-vm-0002", "lab-vm-0003"))
        assert result.group == chosen_group and result.vms[0].already_done
        for vm in TIERS:
            running = find(si_b, f"{vm}-replica")
            assert running.runtime.powerState == "poweredOn"
            assert chain_hashes(site_b, running) == expected[vm], vm
            assert running.guest.ipAddress == f"10.30.0.{10 + int(vm[-1])}"
            assert nic_networks(running) == ["DR Network B"]

        # Production writes on site B; a fresh site A (a new vCenter, no VM) comes up; the plan fails back.
        for seed, vm in enumerate(TIERS, start=20):
            LabControl(site_b).write_random(f"{vm}-replica", offset=5 * MIB, length=200_000, seed=seed)
        latest = {vm: chain_hashes(site_b, find(si_b, f"{vm}-replica")) for vm in TIERS}
        stop_lab(site_a_dir)
        site_a = start_lab(site_a_dir, vms=0, disk_size=32 * MIB)
        si_a = labutil.connect(site_a)
        with lab_connection(site_a) as conn_a, lab_connection(site_b) as conn_b:
            reader = VDDKDisks(conn_a, plugin=str(vddk_standin()), libdir=str(tmp_path))
            writer = VDDKDisks(conn_b, plugin=str(vddk_standin()), libdir=str(tmp_path))
            sites = Sites(source=conn_a, target=conn_b)
            back = failback_plan(
                sites, PLAN, replica_access=writer, source_access=reader, datastore="primary-ds"
            )
            assert back.kind == "failback" and [r.running for r in back.vms] == list(TIERS)
            for vm in TIERS:
                original, replica = find(si_a, vm), find(si_b, f"{vm}-replica")
                assert original.runtime.powerState == "poweredOn"
                assert replica.runtime.powerState == "poweredOff"
                assert chain_hashes(site_a, original) == latest[vm], vm  # B's latest bytes, on A
                assert not state(replica)["promoted"] and state(replica)["source"]["name"] == vm
                assert our_source_snapshots(original) == [] and our_source_snapshots(replica) == []
            # Protected A -> B again: the next plan cycle is incremental (CBT), each point byte-exact.
            LabControl(site_a).write_random("lab-vm-0002", offset=7 * MIB, length=100_000, seed=30)
            made = replicate_plan(sites, PLAN, replica_access=writer, source_access=reader)
            assert made.failed == () and len(made.cycles) == 3
            for cycle in made.cycles:
                assert cycle.bytes_moved <= 2 * MIB, cycle  # what changed, not whole disks
                node = find(si_b, cycle.replica)
                assert point_chain_hashes(site_b, node, cycle.restore_point) == chain_hashes(
                    site_a, find(si_a, cycle.vm)
                )
    finally:
        if si_a is not None:
            labutil.disconnect(si_a)
        labutil.disconnect(si_b)
        stop_lab(site_a_dir)


def point(id_: str, minute: int, group: str | None) -> RestorePoint:
    return RestorePoint(
        id=id_,
        snapshot=f"snapshot-{id_}",
        created=datetime(2026, 11, 26, 9, minute, tzinfo=UTC),
        quiesced=False,
        bytes_moved=0,
        bytes_changed=0,
        group=group,
    )


def with_points(*points: RestorePoint) -> Any:
    return replace(replica_state("x"), restore_points=points)


def test_recovery_points_pick_the_newest_group_every_vm_holds_at_or_before_a_time() -> None:
    states = {
        "db": with_points(point("rp-1", 0, "g1"), point("rp-2", 10, "g2"), point("rp-3", 20, "g3")),
        "app": with_points(point("rp-1", 0, "g1"), point("rp-2", 10, "g2"), point("rp-3", 21, None)),
    }
    assert {v: p.id for v, p in recovery_points(states, consistent=True).items()} == {
        "db": "rp-2",
        "app": "rp-2",
    }
    early = datetime(2026, 11, 26, 9, 5, tzinfo=UTC)
    assert {p.group for p in recovery_points(states, consistent=True, at=early).values()} == {"g1"}
    assert {v: p.id for v, p in recovery_points(states, consistent=False).items()} == {
        "db": "rp-3",
        "app": "rp-3",
    }
    with pytest.raises(NotFound, match="share no consistency-group restore point at or before"):
        recovery_points(states, consistent=True, at=datetime(2026, 11, 26, 8, 0, tzinfo=UTC))
    assert {p.group for p in recovery_points(states, consistent=True, group="g1").values()} == {"g1"}
