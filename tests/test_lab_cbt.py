"""Changed Block Tracking with ESXi's semantics, including the inconvenient parts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests import labutil
from tests.conftest import CBT_BLOCK, CBT_WINDOW, DISK_SIZE


def enable_cbt(vm: Any) -> None:
    labutil.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))


def test_tracking_starts_at_the_next_stun(vm: Any) -> None:
    enable_cbt(vm)
    assert vm.config.changeTrackingEnabled is True
    assert labutil.disks(vm)[0].backing.changeId is None  # not yet: no stun since
    snap = labutil.snapshot(vm, "stun")
    frozen = labutil.disks(snap)[0].backing.changeId
    live = labutil.disks(vm)[0].backing.changeId
    assert re.match(labutil.CHANGE_ID_PATTERN, frozen)
    assert frozen.split("/")[0] == live.split("/")[0]
    assert int(live.split("/")[1]) > int(frozen.split("/")[1])


def test_paged_query_returns_exactly_the_written_blocks(control: Any, vm: Any, vm_name: str) -> None:
    enable_cbt(vm)
    first = labutil.snapshot(vm, "first")
    since = labutil.disks(first)[0].backing.changeId
    writes = [
        (CBT_WINDOW - 100, 200),  # across a window boundary
        (CBT_BLOCK - 1, 2),  # across a block boundary
        (3 * CBT_WINDOW + 5, 1),
        (DISK_SIZE - 512, 512),  # the last sector
    ]
    for i, (offset, length) in enumerate(writes):
        control.write_random(vm_name, offset=offset, length=length, seed=i)
    second = labutil.snapshot(vm, "second")
    key = labutil.disks(second)[0].key
    areas, calls = labutil.changed_areas(vm, second, key, since, DISK_SIZE)
    assert calls == DISK_SIZE // CBT_WINDOW  # each answer covers one window only
    assert areas == labutil.block_round(writes, CBT_BLOCK, DISK_SIZE)


def test_a_single_answer_covers_only_one_window(vm: Any) -> None:
    enable_cbt(vm)
    snap = labutil.snapshot(vm, "one")
    info = vm.QueryChangedDiskAreas(
        snapshot=snap, deviceKey=labutil.disks(snap)[0].key, startOffset=0, changeId="*"
    )
    assert info.startOffset == 0 and info.length == CBT_WINDOW < DISK_SIZE


def test_star_returns_the_allocated_areas_only(control: Any, vm: Any, vm_name: str) -> None:
    control.write_random(vm_name, offset=10 * CBT_BLOCK + 7, length=CBT_BLOCK, seed=1)
    control.write_random(vm_name, offset=300 * CBT_BLOCK, length=3, seed=2)
    enable_cbt(vm)  # enabled after the data was written: "*" still sees it
    snap = labutil.snapshot(vm, "full")
    areas, _ = labutil.changed_areas(vm, snap, labutil.disks(snap)[0].key, "*", DISK_SIZE)
    assert areas == [(10 * CBT_BLOCK, 2 * CBT_BLOCK), (300 * CBT_BLOCK, CBT_BLOCK)]


def test_offset_at_capacity_is_invalid_argument(vm: Any) -> None:
    enable_cbt(vm)
    snap = labutil.snapshot(vm, "s")
    with pytest.raises(vmodl.fault.InvalidArgument) as err:
        vm.QueryChangedDiskAreas(
            snapshot=snap, deviceKey=labutil.disks(snap)[0].key, startOffset=DISK_SIZE, changeId="*"
        )
    assert err.value.invalidProperty == "startOffset"


def test_malformed_change_id_is_invalid_argument(vm: Any) -> None:
    enable_cbt(vm)
    snap = labutil.snapshot(vm, "s")
    with pytest.raises(vmodl.fault.InvalidArgument) as err:
        vm.QueryChangedDiskAreas(
            snapshot=snap, deviceKey=labutil.disks(snap)[0].key, startOffset=0, changeId="garbage"
        )
    assert err.value.invalidProperty == "changeId"


def test_query_without_tracking_is_a_file_fault(vm: Any) -> None:
    snap = labutil.snapshot(vm, "untracked")
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(
            snapshot=snap, deviceKey=labutil.disks(snap)[0].key, startOffset=0, changeId="*"
        )


def test_cbt_reset_makes_old_change_ids_stale(control: Any, vm: Any, vm_name: str) -> None:
    enable_cbt(vm)
    old = labutil.snapshot(vm, "old")
    old_id = labutil.disks(old)[0].backing.changeId
    result = control.cbt_reset(vm_name)
    assert result["disks"][0]["change_id"].split("/")[0] != old_id.split("/")[0]
    control.write_random(vm_name, offset=0, length=4096, seed=1)
    new = labutil.snapshot(vm, "new")
    key = labutil.disks(new)[0].key
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=new, deviceKey=key, startOffset=0, changeId=old_id)
    areas, _ = labutil.changed_areas(vm, new, key, "*", DISK_SIZE)  # the way back: a full read
    assert areas == [(0, CBT_BLOCK)]


def test_unknown_change_id_is_a_file_fault(vm: Any) -> None:
    enable_cbt(vm)
    snap = labutil.snapshot(vm, "s")
    unknown = "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1"
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(
            snapshot=snap, deviceKey=labutil.disks(snap)[0].key, startOffset=0, changeId=unknown
        )


def test_a_revert_keeps_old_change_ids_and_answers_with_a_hole(
    lab: Any, control: Any, vm: Any, vm_name: str
) -> None:
    """ESXi after a revert: a change id from the discarded branch is accepted, and its answer
    comes from the restored layer's tracking, so it omits the blocks the revert changed back
    (VMware's KB on reverting and CBT-based incrementals: do a full backup after a revert)."""
    enable_cbt(vm)
    base = labutil.snapshot(vm, "base")
    control.write_random(vm_name, offset=0, length=4096, seed=1)
    branch = labutil.snapshot(vm, "branch")
    branch_disk = labutil.disks(branch)[0]
    labutil.wait(base.RevertToSnapshot_Task())
    control.write_random(vm_name, offset=CBT_WINDOW, length=4096, seed=2)
    after = labutil.snapshot(vm, "after")
    after_disk = labutil.disks(after)[0]
    areas, _ = labutil.changed_areas(vm, after, after_disk.key, branch_disk.backing.changeId, DISK_SIZE)
    assert areas == [(CBT_WINDOW, CBT_BLOCK)]  # block 0 is missing ...
    copied = labutil.layer_image(lab, branch_disk.backing.fileName).read_bytes()[:4096]
    now = labutil.layer_image(lab, after_disk.backing.fileName).read_bytes()[:4096]
    assert copied != now  # ... although the revert changed its bytes: the hole a replica would keep
    since_base = labutil.disks(base)[0].backing.changeId
    areas, _ = labutil.changed_areas(vm, after, after_disk.key, since_base, DISK_SIZE)
    assert areas == [(CBT_WINDOW, CBT_BLOCK)]


def test_disabling_cbt_takes_effect_at_once(vm: Any) -> None:
    enable_cbt(vm)
    labutil.snapshot(vm, "s")
    labutil.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    assert labutil.disks(vm)[0].backing.changeId is None
    snap = labutil.snapshot(vm, "after-disable")
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(
            snapshot=snap, deviceKey=labutil.disks(snap)[0].key, startOffset=0, changeId="*"
        )


def test_each_disk_is_tracked_on_its_own(control: Any, vm: Any, vm_name: str) -> None:
    enable_cbt(vm)
    first = labutil.snapshot(vm, "first")
    control.write_random(vm_name, offset=0, length=10, seed=1, disk=1)
    second = labutil.snapshot(vm, "second")
    d0, d1 = labutil.disks(first)
    areas0, _ = labutil.changed_areas(vm, second, d0.key, d0.backing.changeId, DISK_SIZE)
    areas1, _ = labutil.changed_areas(vm, second, d1.key, d1.backing.changeId, DISK_SIZE)
    assert areas0 == [] and areas1 == [(0, CBT_BLOCK)]


def test_a_power_cycle_is_a_stun_that_starts_tracking(vm: Any) -> None:
    enable_cbt(vm)
    labutil.wait(vm.PowerOffVM_Task())
    assert labutil.disks(vm)[0].backing.changeId is None
    labutil.wait(vm.PowerOnVM_Task())
    assert re.match(labutil.CHANGE_ID_PATTERN, labutil.disks(vm)[0].backing.changeId)
