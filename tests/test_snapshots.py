"""Snapshot operations, checked with plain pyVmomi and the disks' bytes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests import labutil
from tests.replication_util import snapshots
from vsphere_replicator.errors import NotFound, SnapshotChainTooDeep, TaskFailed
from vsphere_replicator.inventory import get_vm
from vsphere_replicator.snapshots import (
    MARKER,
    QuiesceFallback,
    consolidate_if_needed,
    create_snapshot,
    find_orphans,
    find_snapshot,
    is_ours,
    remove_all_snapshots,
    remove_snapshot,
    revert_to_snapshot,
    sweep_orphans,
)


def test_created_snapshots_carry_the_marker(conn: Any, vm: Any, vm_name: str) -> None:
    result = create_snapshot(conn, vm_name, "nightly", description="before patching", quiesce=True)
    node = vm.snapshot.rootSnapshotList[0]
    assert node.name == "vr-nightly" and node.description.startswith(MARKER + " run=")
    assert node.description.endswith("\nbefore patching")
    assert result.quiesced is True and result.fallback_reason is None and is_ours(result.snapshot)


def test_quiesce_failure_fails_by_default_and_leaves_nothing(
    conn: Any, control: Any, vm: Any, vm_name: str
) -> None:
    control.fail_method("CreateSnapshot_Task", "ApplicationQuiesceFault")
    with pytest.raises(TaskFailed) as err:
        create_snapshot(conn, vm_name, "q", quiesce=True)
    assert err.value.fault == "ApplicationQuiesceFault"
    assert vm.snapshot is None


def test_quiesce_failure_can_fall_back_to_crash_consistent(
    conn: Any, control: Any, vm: Any, vm_name: str
) -> None:
    control.fail_method("CreateSnapshot_Task", "ApplicationQuiesceFault")
    result = create_snapshot(
        conn, vm_name, "q", quiesce=True, on_quiesce_failure=QuiesceFallback.CRASH_CONSISTENT
    )
    assert result.quiesced is False and "ApplicationQuiesceFault" in (result.fallback_reason or "")
    assert vm.snapshot.rootSnapshotList[0].quiesced is False


def test_tree_find_revert_and_remove(lab: Any, conn: Any, control: Any, vm: Any, vm_name: str) -> None:
    first = create_snapshot(conn, vm_name, "first").snapshot
    before = labutil.layer_image(lab, labutil.disks(vm)[0].backing.fileName).read_bytes()
    control.write_random(vm_name, offset=0, length=4096, seed=1)
    second = create_snapshot(conn, vm_name, "second").snapshot
    info = get_vm(conn, vm_name)
    assert [s.name for s in info.snapshots] == ["vr-first"]
    assert [c.name for c in info.snapshots[0].children] == ["vr-second"]
    assert find_snapshot(info, name="vr-second") == find_snapshot(info, id=second.id)
    with pytest.raises(NotFound):
        find_snapshot(info, name="nope")

    reverted = revert_to_snapshot(conn, vm_name, first)
    assert reverted.power_state == "poweredOff" and reverted.current_snapshot == first.moref
    assert labutil.layer_image(lab, labutil.disks(vm)[0].backing.fileName).read_bytes() == before

    after = remove_snapshot(conn, vm_name, first, remove_children=True)
    assert after.snapshots == () and vm.snapshot is None


def test_remove_all(conn: Any, vm: Any, vm_name: str) -> None:
    for i in range(3):
        create_snapshot(conn, vm_name, f"s{i}")
    assert remove_all_snapshots(conn, vm_name).snapshots == ()
    assert vm.snapshot is None
    assert consolidate_if_needed(conn, vm_name) is False


def test_refuses_a_33rd_level_before_asking_vcenter(conn: Any, control: Any, vm: Any, vm_name: str) -> None:
    for i in range(32):
        labutil.snapshot(vm, f"level-{i}")
    control.reset_stats()
    with pytest.raises(SnapshotChainTooDeep, match="32"):
        create_snapshot(conn, vm_name, "too-deep")
    assert "CreateSnapshot_Task" not in control.stats()["methods"]


def test_the_sweep_removes_only_our_old_snapshots(conn: Any, vm: Any, vm_name: str) -> None:
    labutil.snapshot(vm, "operator-made")
    foreign = vm.CreateSnapshot_Task(
        name="vr-lookalike", description=MARKER + "-not-really", memory=False, quiesce=False
    )
    labutil.wait(foreign)
    ours = create_snapshot(conn, vm_name, "left-behind").snapshot
    assert find_orphans(conn, older_than=timedelta(hours=1)) == ()
    orphans = [o for o in find_orphans(conn, older_than=timedelta(0)) if o.vm == vm_name]
    assert [o.snapshot.moref for o in orphans] == [ours.moref]
    removed = sweep_orphans(conn, older_than=timedelta(0))
    assert ours.moref in [o.snapshot.moref for o in removed]
    assert sorted(s.name for s in get_vm(conn, vm_name).all_snapshots()) == ["operator-made", "vr-lookalike"]


def test_a_removal_that_needs_consolidation_is_consolidated(
    conn: Any, control: Any, vm: Any, vm_name: str
) -> None:
    snap = create_snapshot(conn, vm_name, "c").snapshot
    control.leave_consolidation_needed()
    control.reset_stats()
    after = remove_snapshot(conn, vm_name, snap)
    assert control.stats()["methods"]["ConsolidateVMDisks_Task"] == 1
    assert after.consolidation_needed is False and vm.runtime.consolidationNeeded is False


def _cannot_quiesce(control: Any, vm_name: str, cause: str) -> str:
    """Make the VM's next quiesced snapshot fail as vSphere would for `cause`; the fault expected."""
    if cause == "tools-not-running":
        control.set_tools(vm_name, "notRunning")
        return "ToolsUnavailable"
    if cause == "generic":
        message = "An error occurred while saving the snapshot: Failed to quiesce the virtual machine."
        control.fail_method("CreateSnapshot_Task", "SnapshotFault", message=message)
        return "SnapshotFault"
    control.fail_quiesce(cause)
    return cause


QUIESCE_CAUSES = ["tools-not-running", "FilesystemQuiesceFault", "ApplicationQuiesceFault", "generic"]


@pytest.mark.parametrize("cause", QUIESCE_CAUSES)
def test_every_quiesce_fault_falls_back_to_crash_consistent(
    conn: Any, control: Any, vm: Any, vm_name: str, cause: str
) -> None:
    fault = _cannot_quiesce(control, vm_name, cause)
    result = create_snapshot(
        conn, vm_name, "q", quiesce=True, on_quiesce_failure=QuiesceFallback.CRASH_CONSISTENT
    )
    assert result.quiesced is False and (result.fallback_reason or "").startswith(fault + ":")
    assert [(s.name, s.quiesced) for s in snapshots(vm)] == [("vr-q", False)]


@pytest.mark.parametrize("cause", QUIESCE_CAUSES)
def test_a_required_quiesce_fails_naming_the_fault_and_leaves_no_snapshot(
    conn: Any, control: Any, vm: Any, vm_name: str, cause: str
) -> None:
    fault = _cannot_quiesce(control, vm_name, cause)
    with pytest.raises(TaskFailed) as err:
        create_snapshot(conn, vm_name, "q", quiesce=True)
    assert err.value.fault == fault
    assert f"{vm_name} could not be quiesced ({fault})" in str(err.value)
    assert snapshots(vm) == []


def test_a_snapshot_fault_that_is_not_about_quiescing_never_falls_back(
    conn: Any, control: Any, vm: Any, vm_name: str
) -> None:
    control.fail_method("CreateSnapshot_Task", "SnapshotFault", message="the snapshot file is corrupt")
    with pytest.raises(TaskFailed) as err:
        create_snapshot(conn, vm_name, "q", quiesce=True, on_quiesce_failure=QuiesceFallback.CRASH_CONSISTENT)
    assert err.value.fault == "SnapshotFault" and "could not be quiesced" not in str(err.value)
    assert snapshots(vm) == []
