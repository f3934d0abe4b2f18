"""CBT through the library: enable with a stun, paged queries, stale ids caught."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests import labutil
from tests.conftest import CBT_BLOCK, CBT_WINDOW, DISK_SIZE
from vsphere_replicator.cbt import (
    ALL_ALLOCATED,
    ChangedArea,
    change_id_uuid,
    change_ids_at,
    changed_areas,
    disable_cbt,
    enable_cbt,
    tracked_disks,
)
from vsphere_replicator.errors import CBTError, ChangeIdInvalid, InvalidInput
from vsphere_replicator.inventory import get_vm
from vsphere_replicator.snapshots import create_snapshot


def areas(pairs: list[tuple[int, int]]) -> tuple[ChangedArea, ...]:
    return tuple(ChangedArea(s, n) for s, n in pairs)


def test_enable_on_a_running_vm_stuns_it_and_leaves_no_snapshot(conn: Any, vm: Any, vm_name: str) -> None:
    info = enable_cbt(conn, vm_name)
    assert info.cbt_enabled and all(tracked_disks(info).values())
    assert vm.config.changeTrackingEnabled is True and vm.snapshot is None
    assert all(d.backing.changeId for d in labutil.disks(vm))


def test_enabling_with_snapshots_is_refused_and_changes_nothing(conn: Any, vm: Any, vm_name: str) -> None:
    labutil.snapshot(vm, "existing")
    with pytest.raises(CBTError, match="snapshots"):
        enable_cbt(conn, vm_name)
    assert not vm.config.changeTrackingEnabled


def test_scattered_writes_come_back_block_aligned_over_many_windows(
    conn: Any, control: Any, vm_name: str
) -> None:
    info = enable_cbt(conn, vm_name)
    base = create_snapshot(conn, info, "base").snapshot
    since = change_ids_at(conn, base)[info.disks[0].key]
    assert since is not None
    rng = random.Random(4)
    writes = [(rng.randrange(0, DISK_SIZE - 70_000), rng.randrange(1, 70_000)) for _ in range(12)]
    writes += [(CBT_WINDOW - 10, 20), (DISK_SIZE - 1, 1)]
    for i, (offset, length) in enumerate(writes):
        control.write_random(vm_name, offset=offset, length=length, seed=i)
    top = create_snapshot(conn, info, "top").snapshot
    result = changed_areas(conn, info, top, info.disks[0].key, since)
    assert result.queries == DISK_SIZE // CBT_WINDOW
    assert result.areas == areas(labutil.block_round(writes, CBT_BLOCK, DISK_SIZE))
    assert result.total == sum(n for _, n in labutil.block_round(writes, CBT_BLOCK, DISK_SIZE))


def test_all_allocated_on_a_sparse_disk(conn: Any, control: Any, vm_name: str) -> None:
    control.write_random(vm_name, offset=3 * CBT_BLOCK, length=100, seed=1)
    info = enable_cbt(conn, vm_name)
    snap = create_snapshot(conn, info, "full").snapshot
    result = changed_areas(conn, info, snap, info.disks[0].key, ALL_ALLOCATED)
    assert result.areas == areas([(3 * CBT_BLOCK, CBT_BLOCK)])


def test_each_disk_answers_for_itself(conn: Any, control: Any, vm_name: str) -> None:
    info = enable_cbt(conn, vm_name)
    base = create_snapshot(conn, info, "base").snapshot
    ids = labutil.tracked(change_ids_at(conn, base))
    control.write_random(vm_name, offset=CBT_BLOCK, length=10, seed=1, disk=1)
    top = create_snapshot(conn, info, "top").snapshot
    first, second = (d.key for d in info.disks)
    assert changed_areas(conn, info, top, first, ids[first]).areas == ()
    assert changed_areas(conn, info, top, second, ids[second]).areas == areas([(CBT_BLOCK, CBT_BLOCK)])


def test_a_reset_makes_the_old_change_id_invalid_not_empty(conn: Any, control: Any, vm_name: str) -> None:
    info = enable_cbt(conn, vm_name)
    base = create_snapshot(conn, info, "base").snapshot
    since = change_ids_at(conn, base)[info.disks[0].key]
    assert since is not None
    control.cbt_reset(vm_name)
    control.write_random(vm_name, offset=0, length=10, seed=1)
    top = create_snapshot(conn, info, "top").snapshot
    with pytest.raises(ChangeIdInvalid) as err:
        changed_areas(conn, info, top, info.disks[0].key, since)
    assert err.value.disk == info.disks[0].key and err.value.change_id == since
    full = changed_areas(conn, info, top, info.disks[0].key, ALL_ALLOCATED)
    assert full.areas == areas([(0, CBT_BLOCK)])


def test_an_unknown_change_id_with_the_right_identity_is_invalid(conn: Any, vm_name: str) -> None:
    info = enable_cbt(conn, vm_name)
    snap = create_snapshot(conn, info, "s").snapshot
    current = change_ids_at(conn, snap)[info.disks[0].key]
    assert current is not None
    with pytest.raises(ChangeIdInvalid):
        changed_areas(conn, info, snap, info.disks[0].key, change_id_uuid(current) + "/999999")


def test_untracked_snapshots_and_bad_ids_are_errors(conn: Any, vm_name: str) -> None:
    info = get_vm(conn, vm_name)
    snap = create_snapshot(conn, info, "untracked").snapshot
    with pytest.raises(CBTError, match="not tracked"):
        changed_areas(conn, info, snap, info.disks[0].key, ALL_ALLOCATED)
    with pytest.raises(InvalidInput, match="not a change id"):
        change_id_uuid("nonsense")


def test_disable(conn: Any, vm: Any, vm_name: str) -> None:
    enable_cbt(conn, vm_name)
    info = disable_cbt(conn, vm_name)
    assert not info.cbt_enabled and not any(tracked_disks(info).values())
    assert vm.config.changeTrackingEnabled is False
