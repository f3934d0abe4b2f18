"""A recovery plan fails back together: `failback --plan`, tier by tier, on one vCenter.

Two VMs in one plan (tiers 1 and 2) fail over planned; production writes
land on the running replicas; `failback --plan` brings each original back,
tier 1 first, and protects it again. Checked with plain pyVmomi and the
disks' bytes, not through the library.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.conftest import lab_vddk
from tests.replication_util import find, our_source_snapshots, source_hashes, state
from tests.test_replication_crash import cli_env
from vsphere_replicator.connection import Connection
from vsphere_replicator.lab import LabControl, LabInfo
from vsphere_replicator.replication import ReplicaTarget, protect
from vsphere_replicator.replication.plans import failover_plan
from vsphere_replicator.replication.settings import PlanMembership


def test_a_plan_fails_back_tier_by_tier_with_the_replicas_bytes(
    lab: LabInfo, si: Any, conn: Connection, control: LabControl, fresh_vm: Callable[[], str]
) -> None:
    first, second = fresh_vm(), fresh_vm()
    plan = f"back-{first}"
    access = lab_vddk(conn)
    for tier, vm in enumerate((first, second), start=1):
        control.write_random(vm, offset=tier << 20, length=200_000, seed=tier)
        target = ReplicaTarget(datastore="secondary-ds", plan=PlanMembership(name=plan, tier=tier))
        protect(conn, vm, target, replica_access=access)
    up = failover_plan(conn, plan, kind="planned", replica_access=access)
    assert [r.running for r in up.vms] == [f"{first}-replica", f"{second}-replica"]
    expected = {}
    for seed, vm in enumerate((first, second), start=10):
        control.write_random(f"{vm}-replica", offset=3 << 20, length=300_000, seed=seed)  # production there
        expected[vm] = source_hashes(lab, find(si, f"{vm}-replica"))

    command = [sys.executable, "-m", "vsphere_replicator.cli", "failback", "--plan", plan, "--json"]
    done = subprocess.run(command, env=cli_env(lab), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert lab.password not in done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == "failback" and result["tiers"] == [[first], [second]]
    assert [r["running"] for r in result["vms"]] == [first, second]

    for vm in (first, second):
        original, replica = find(si, vm), find(si, f"{vm}-replica")
        assert original.runtime.powerState == "poweredOn"
        assert replica.runtime.powerState == "poweredOff"
        assert source_hashes(lab, original) == expected[vm]  # what production wrote on the replica
        assert state(replica)["source"]["name"] == vm and not state(replica)["promoted"]
        assert our_source_snapshots(original) == [] and our_source_snapshots(replica) == []

    again = subprocess.run(
        command, env=cli_env(lab), capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0, again.stderr
    assert all(r["already_done"] for r in json.loads(again.stdout)["vms"])  # nothing left to do


def test_failback_names_a_vm_or_a_plan(lab: LabInfo) -> None:
    base = [sys.executable, "-m", "vsphere_replicator.cli", "failback"]
    for args in ([], ["lab-vm-0001", "--plan", "p"]):
        done = subprocess.run(
            [*base, *args], env=cli_env(lab), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2 and "--plan" in done.stderr
