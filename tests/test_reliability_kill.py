"""Real kill -9, a few per operation: the CLI killed at a step, run again, ends done and clean.

The fault x step matrix (test_reliability.py) stops operations in-process;
these runs prove the same of a process that really dies, its lease left
behind (taken over at once, its holder being dead), through the CLI.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import lab_vddk
from tests.replication_util import (
    JOURNAL_KEY,
    STATE_KEY,
    find,
    option,
    our_source_snapshots,
    snapshots,
    source_hashes,
)
from tests.test_replication_crash import cli_env
from vsphere_replicator.replication import ReplicaTarget, protect, replicate

pytestmark = pytest.mark.reliability

TARGET = ReplicaTarget(datastore="secondary-ds", networks=(("VM Network", "DR Network"),))
RECOVERY_KEY = "vsphere_replicator.recovery"


def run(lab: Any, *args: str, **extra: str) -> Any:
    import subprocess
    import sys

    command = [sys.executable, "-m", "vsphere_replicator.cli", *args]
    return subprocess.run(command, env=cli_env(lab, **extra), capture_output=True, text=True, timeout=180)


def killed_then_finished(lab: Any, at: str, *args: str) -> None:
    killed = run(lab, *args, VSPHERE_REPLICATOR_CRASH_AT=at)
    assert killed.returncode == -9, (at, killed.returncode, killed.stderr)
    again = run(lab, *args)
    assert again.returncode == 0, (at, again.stderr)


def protected(lab: Any, conn: Any, control: Any, vm: str) -> None:
    control.write_random(vm, offset=1 << 20, length=2 << 20, seed=3)
    protect(conn, vm, TARGET)
    control.write_random(vm, offset=5 << 20, length=1 << 20, seed=4)
    replicate(conn, vm, replica_access=lab_vddk(conn))


@pytest.mark.parametrize("at", ["failover-source-off:1", "failover-powered-on:1"])
def test_planned_failover_killed_then_run_again_is_switched(
    lab: Any, si: Any, conn: Any, control: Any, fresh_vm: Any, at: str
) -> None:
    vm = fresh_vm()
    protected(lab, conn, control, vm)
    control.write_random(vm, offset=9 << 20, length=1 << 20, seed=5)
    content = source_hashes(lab, find(si, vm))
    killed_then_finished(lab, at, "failover", vm, "--planned")
    source, replica = find(si, vm), find(si, f"{vm}-replica")
    assert source.runtime.powerState == "poweredOff" and replica.runtime.powerState == "poweredOn"
    assert source_hashes(lab, replica) == content
    assert json.loads(option(replica, STATE_KEY) or "{}")["promoted"] is True
    assert option(replica, RECOVERY_KEY) is None and snapshots(replica) == []
    assert our_source_snapshots(source) == []


def test_unplanned_failover_killed_after_its_revert_then_run_again_is_switched(
    lab: Any, si: Any, conn: Any, control: Any, fresh_vm: Any
) -> None:
    vm = fresh_vm()
    protected(lab, conn, control, vm)
    killed_then_finished(
        lab, "failover-reverted:1", "failover", vm, "--unplanned", "--force", "--restore-point", "rp-000001"
    )
    replica = find(si, f"{vm}-replica")
    assert replica.runtime.powerState == "poweredOn" and snapshots(replica) == []
    assert json.loads(option(replica, STATE_KEY) or "{}")["promoted_point"] == "rp-000001"


@pytest.mark.parametrize("at", ["failback-copied:1", "failback-switched:1"])
def test_failback_killed_then_run_again_ends_with_protection_restored(
    lab: Any, si: Any, conn: Any, control: Any, fresh_vm: Any, at: str
) -> None:
    vm = fresh_vm()
    protected(lab, conn, control, vm)
    assert run(lab, "failover", vm, "--planned").returncode == 0
    control.write_random(f"{vm}-replica", offset=3 << 20, length=1 << 20, seed=6)
    content = source_hashes(lab, find(si, f"{vm}-replica"))
    killed_then_finished(lab, at, "failback", vm)
    original, replica = find(si, vm), find(si, f"{vm}-replica")
    assert original.runtime.powerState == "poweredOn" and replica.runtime.powerState == "poweredOff"
    assert source_hashes(lab, original) == content
    assert [s.name for s in snapshots(replica)] == ["vr-rp-000001"]
    assert option(replica, RECOVERY_KEY) is None and option(original, STATE_KEY) is None
    assert snapshots(original) == []


def test_unprotect_killed_then_run_again_keeps_a_plain_replica(
    lab: Any, si: Any, conn: Any, control: Any, fresh_vm: Any
) -> None:
    vm = fresh_vm()
    protected(lab, conn, control, vm)
    content = source_hashes(lab, find(si, vm))
    killed_then_finished(lab, "unprotect-points-removed:1", "unprotect", vm)
    replica = find(si, f"{vm}-replica")
    assert option(replica, STATE_KEY) is None and option(replica, JOURNAL_KEY) is None
    assert snapshots(replica) == [] and source_hashes(lab, replica) == content
    gone = run(lab, "unprotect", vm)
    assert gone.returncode == 1 and "is not protected" in gone.stderr


def test_test_failover_killed_after_its_clone_then_run_again_runs_the_copy(
    lab: Any, si: Any, conn: Any, control: Any, fresh_vm: Any
) -> None:
    vm = fresh_vm()
    protected(lab, conn, control, vm)
    killed_then_finished(lab, "test-copy-made:1", "failover", vm, "--test")
    copy = find(si, f"{vm}-failover-test")
    assert copy.runtime.powerState == "poweredOn"
    assert run(lab, "failover", vm, "--cleanup").returncode == 0
