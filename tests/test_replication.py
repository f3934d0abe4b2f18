"""Protect and replicate against the lab; every outcome checked with plain pyVmomi and file hashes."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import labutil
from tests.conftest import CBT_BLOCK, DISK_SIZE, serve
from tests.replication_util import (
    JOURNAL_KEY,
    assert_replica_matches,
    find,
    option,
    our_source_snapshots,
    point_hashes,
    snapshots,
    source_hashes,
    state,
)
from vsphere_replicator.errors import TaskFailed
from vsphere_replicator.replication import (
    CycleSettings,
    IncrementalRefused,
    ReplicaTarget,
    VDDKDisks,
    protect,
    replicate,
)
from vsphere_replicator.transport import NBDEndpoint

TARGET = ReplicaTarget(datastore="secondary-ds")


def scatter(control: Any, vm_name: str, rng: random.Random, count: int = 6) -> None:
    """Guest writes at scattered offsets, some across CBT blocks and query windows, on both disks."""
    for _ in range(count):
        disk = rng.randrange(2)
        length = rng.choice([1, 4096, CBT_BLOCK + 17, 300_000])
        offset = rng.randrange(0, DISK_SIZE - length)
        control.write_random(vm_name, offset=offset, length=length, seed=rng.randrange(1 << 30), disk=disk)


@pytest.fixture
def access(vddk: VDDKDisks) -> VDDKDisks:
    return vddk


def test_seed_then_ten_cycles_each_byte_exact_and_retention_keeps_verifiable_points(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    rng = random.Random(5)
    scatter(control, vm_name, rng)
    settings = CycleSettings(keep=4)
    seeded = protect(conn, vm_name, TARGET, settings=settings)
    source, replica = find(si, vm_name), find(si, f"{vm_name}-replica")
    assert seeded.replica == replica.name and seeded.restore_point == "rp-000001"
    assert replica.runtime.powerState == "poweredOff"
    assert replica.config.files.vmPathName.startswith("[secondary-ds]")
    assert_replica_matches(lab, source, replica, "rp-000001")
    assert our_source_snapshots(source) == []
    expected = {"rp-000001": source_hashes(lab, source)}
    for cycle in range(2, 12):
        scatter(control, vm_name, rng)
        result = replicate(conn, vm_name, replica_access=access)
        point = f"rp-{cycle:06d}"
        assert result.restore_point == point and result.full_resync == () and not result.resumed
        assert 0 < result.bytes_changed <= result.bytes_moved <= result.bytes_changed * 1.05 + 8192
        assert_replica_matches(lab, source, replica, point)
        expected[point] = source_hashes(lab, source)
        assert our_source_snapshots(source) == []
        assert option(replica, JOURNAL_KEY) is None
    recorded = state(replica)
    kept = [p["id"] for p in recorded["restore_points"]]
    assert kept == ["rp-000008", "rp-000009", "rp-000010", "rp-000011"]
    assert sorted(n.name for n in snapshots(replica)) == sorted("vr-" + p for p in kept)
    for point in kept:
        assert point_hashes(lab, replica, point) == expected[point], point


def test_stale_change_id_resyncs_that_disk_only(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    rng = random.Random(7)
    scatter(control, vm_name, rng)
    protect(conn, vm_name, TARGET)
    scatter(control, vm_name, rng)
    control.cbt_reset(vm_name, disk=1)
    result = replicate(conn, vm_name, replica_access=access)
    source = find(si, vm_name)
    second = labutil.disks(source)[1].key
    assert result.full_resync == (second,)
    assert_replica_matches(lab, source, find(si, f"{vm_name}-replica"), result.restore_point)
    scatter(control, vm_name, rng)
    again = replicate(conn, vm_name, replica_access=access)
    assert again.full_resync == ()
    assert_replica_matches(lab, source, find(si, f"{vm_name}-replica"), again.restore_point)


def test_a_disk_added_on_the_source_is_read_whole_into_a_new_replica_disk(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    protect(conn, vm_name, TARGET)
    source = find(si, vm_name)
    first = labutil.disks(source)[0]
    disk = vim.vm.device.VirtualDisk(
        key=-1,
        controllerKey=first.controllerKey,
        unitNumber=5,
        capacityInBytes=DISK_SIZE // 2,
        capacityInKB=DISK_SIZE // 2048,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName="[primary-ds]", diskMode="persistent", thinProvisioned=True
        ),
    )
    spec = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
    WaitForTask(source.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[spec])))
    control.write_random(vm_name, offset=4096, length=200_000, seed=12, disk=2)
    control.write_random(vm_name, offset=0, length=10, seed=13, disk=0)
    result = replicate(conn, vm_name, replica_access=access)
    added = labutil.disks(find(si, vm_name))[2].key
    assert result.full_resync == (added,)
    assert_replica_matches(lab, find(si, vm_name), find(si, f"{vm_name}-replica"), result.restore_point)


def test_a_disk_removed_from_the_source_leaves_the_new_restore_point_only(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    protect(conn, vm_name, TARGET)
    source = find(si, vm_name)
    gone = labutil.disks(source)[1]
    spec = vim.vm.device.VirtualDeviceSpec(operation="remove", device=gone)
    WaitForTask(source.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[spec])))
    control.write_random(vm_name, offset=8192, length=30_000, seed=14, disk=0)
    result = replicate(conn, vm_name, replica_access=access)
    assert result.full_resync == ()
    replica = find(si, f"{vm_name}-replica")
    assert_replica_matches(lab, find(si, vm_name), replica, result.restore_point)
    assert len(point_hashes(lab, replica, "rp-000001")) == 2  # the older point keeps the removed disk
    assert [d["source_key"] for d in state(replica)["disks"]] == [labutil.disks(source)[0].key]


def test_grown_disk_resyncs_that_disk_only(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    rng = random.Random(9)
    scatter(control, vm_name, rng)
    protect(conn, vm_name, TARGET)
    source = find(si, vm_name)
    disk = labutil.disks(source)[0]
    disk.capacityInBytes = DISK_SIZE * 2
    disk.capacityInKB = DISK_SIZE * 2 // 1024
    spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)])
    WaitForTask(source.ReconfigVM_Task(spec))
    control.write_random(vm_name, offset=DISK_SIZE + 4096, length=100_000, seed=3, disk=0)
    scatter(control, vm_name, rng)
    result = replicate(conn, vm_name, replica_access=access)
    assert result.full_resync == (labutil.disks(source)[0].key,)
    replica = find(si, f"{vm_name}-replica")
    assert_replica_matches(lab, source, replica, result.restore_point)
    # The first restore point still holds the disk as it was, at its old size.
    assert len(point_hashes(lab, replica, "rp-000001")) == 2


def test_incremental_larger_than_allowed_is_refused_and_changes_nothing(
    si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    protect(conn, vm_name, TARGET, settings=CycleSettings(max_change_share=0.1))
    control.write_random(vm_name, offset=0, length=DISK_SIZE // 5, seed=4)
    before = state(find(si, f"{vm_name}-replica"))
    with pytest.raises(IncrementalRefused, match="more than 10%"):
        replicate(conn, vm_name, replica_access=access)
    replica = find(si, f"{vm_name}-replica")
    after = state(replica)
    assert after["last_error"].startswith("IncrementalRefused: ") and "more than 10%" in after["last_error"]
    assert {**after, "last_error": None} == before and option(replica, JOURNAL_KEY) is None
    assert our_source_snapshots(find(si, vm_name)) == []
    from vsphere_replicator.replication.status import protection_status

    shown = next(s for s in protection_status(conn) if s.vm == vm_name)
    assert shown.last_error == after["last_error"] and shown.latest_point == "rp-000001"


def test_cbt_that_missed_a_write_is_caught_by_sampling_and_the_disk_resynced(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    control.write_random(vm_name, offset=0, length=DISK_SIZE // 2, seed=5)
    protect(conn, vm_name, TARGET)
    # Change the bytes behind CBT's back, as the tracking bugs of KB 2090639 did.
    source = find(si, vm_name)
    extent = labutil.local_extent(lab, labutil.disks(source)[0].backing.fileName)
    with extent.open("r+b") as f:
        f.seek(0)
        f.write(random.Random(6).randbytes(DISK_SIZE // 2))
    control.write_random(vm_name, offset=DISK_SIZE - 8192, length=10, seed=7, disk=1)
    result = replicate(conn, vm_name, replica_access=access, settings=CycleSettings(sample_areas=8))
    assert result.full_resync == (labutil.disks(source)[0].key,)
    assert_replica_matches(lab, source, find(si, f"{vm_name}-replica"), result.restore_point)


def test_an_identical_copy_is_adopted_as_the_seed_and_a_different_one_refused(
    lab: Any, si: Any, conn: Any, control: Any, fresh_vm: Any, access: VDDKDisks
) -> None:
    from vsphere_replicator.clone import ClonePlacement, clone_vm
    from vsphere_replicator.errors import InvalidInput

    good, bad = fresh_vm(), fresh_vm()
    for vm in (good, bad):
        control.write_random(vm, offset=12345, length=400_000, seed=8)
        clone_vm(conn, vm, "{vm}-copy", ClonePlacement(datastore="secondary-ds"))
    control.write_random(bad, offset=0, length=10, seed=9)  # the source moved on: the copy is stale
    with pytest.raises(InvalidInput, match="differs"):
        protect(conn, bad, TARGET, adopt=f"{bad}-copy", replica_access=access)
    assert our_source_snapshots(find(si, bad)) == [] and option(find(si, f"{bad}-copy"), JOURNAL_KEY) is None
    assert state_or_none(find(si, f"{bad}-copy")) is None

    result = protect(conn, good, TARGET, adopt=f"{good}-copy", replica_access=access)
    assert result.replica == f"{good}-copy" and result.restore_point == "rp-000001"
    control.write_random(good, offset=1 << 20, length=99_999, seed=10)
    cycle = replicate(conn, good, replica_access=access)
    assert_replica_matches(lab, find(si, good), find(si, f"{good}-copy"), cycle.restore_point)


def state_or_none(vm: Any) -> Any:
    return option(vm, "vsphere_replicator.state")


def test_the_orphan_sweep_never_touches_restore_points(
    si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    from datetime import timedelta

    from vsphere_replicator.snapshots import sweep_orphans

    protect(conn, vm_name, TARGET)
    control.write_random(vm_name, offset=0, length=5000, seed=11)
    replicate(conn, vm_name, replica_access=access)
    replica = find(si, f"{vm_name}-replica")
    before = sorted(n.name for n in snapshots(replica))
    swept = sweep_orphans(conn, older_than=timedelta(0))
    assert all(o.vm != replica.name for o in swept)
    assert sorted(n.name for n in snapshots(replica)) == before == ["vr-rp-000001", "vr-rp-000002"]


def test_a_running_replica_is_never_written(
    si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    from pyVim.task import WaitForTask

    from vsphere_replicator.replication import StateError

    protect(conn, vm_name, TARGET)
    WaitForTask(find(si, f"{vm_name}-replica").PowerOnVM_Task())
    control.write_random(vm_name, offset=0, length=4096, seed=15)
    with pytest.raises(StateError, match="poweredOn"):
        replicate(conn, vm_name, replica_access=access)
    assert our_source_snapshots(find(si, vm_name)) == []
    assert [p["id"] for p in state(find(si, f"{vm_name}-replica"))["restore_points"]] == ["rp-000001"]


def test_cycles_read_the_source_through_nbd_servers(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, tmp_path: Path, vddk: VDDKDisks
) -> None:
    """The source over NBD (qemu-nbd serving each snapshot layer through its chain), byte-exact.

    The replica's current layer is a redo log after the seed, written through
    VDDK: qemu's vmdk driver rewrites a vmfsSparse descriptor in a form it
    cannot open again, so no operator's qemu-nbd writes one.
    """
    from vsphere_replicator.replication import NBDDisks

    started: list[subprocess.Popen[bytes]] = []

    def export(disk: Any) -> NBDEndpoint:
        sock = tmp_path / f"nbd-{len(started)}.sock"
        image = labutil.local_descriptor(lab, disk.file_name)
        started.append(serve("qemu-nbd", image, sock, read_only=True, fmt="vmdk"))
        return NBDEndpoint(socket_path=str(sock))

    rng = random.Random(16)
    scatter(control, vm_name, rng)
    protect(conn, vm_name, TARGET)
    try:
        for _ in range(2):
            scatter(control, vm_name, rng)
            result = replicate(
                conn, vm_name, replica_access=vddk, source_access=NBDDisks(export, connections=2)
            )
            assert_replica_matches(
                lab, find(si, vm_name), find(si, f"{vm_name}-replica"), result.restore_point
            )
        assert len(started) >= 4  # each cycle read both disks through servers of their own
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)


def test_a_verified_seed_can_be_checked_again_later(
    lab: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    from vsphere_replicator.replication.restore_points import verify_restore_point

    control.write_random(vm_name, offset=777, length=123_456, seed=17)
    protect(conn, vm_name, TARGET, settings=CycleSettings(verify=True), replica_access=access)
    check = verify_restore_point(conn, vm_name, access, "rp-000001")
    assert check.ok and len(check.disks) == 2


def test_a_cycle_that_finds_nothing_changed_confirms_the_newest_point_instead_of_adding_one(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    control.write_random(vm_name, offset=0, length=70_000, seed=18)
    protect(conn, vm_name, TARGET)
    control.write_random(vm_name, offset=1 << 20, length=70_000, seed=19)
    changed = replicate(conn, vm_name, replica_access=access)
    idle = replicate(conn, vm_name, replica_access=access)
    assert idle.restore_point == changed.restore_point == "rp-000002"
    assert idle.bytes_moved == 0 and idle.created > changed.created
    replica = find(si, f"{vm_name}-replica")
    recorded = state(replica)
    assert [p["id"] for p in recorded["restore_points"]] == ["rp-000001", "rp-000002"]
    assert recorded["restore_points"][-1]["confirmed"] is not None
    assert sorted(n.name for n in snapshots(replica)) == ["vr-rp-000001", "vr-rp-000002"]
    assert our_source_snapshots(find(si, vm_name)) == [] and option(replica, JOURNAL_KEY) is None
    control.write_random(vm_name, offset=2 << 20, length=5, seed=20)
    after = replicate(conn, vm_name, replica_access=access)
    assert after.restore_point == "rp-000003" and after.full_resync == ()
    assert_replica_matches(lab, find(si, vm_name), replica, "rp-000003")


def test_quiesce_try_on_a_vm_without_tools_makes_a_crash_consistent_point_marked_so(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    protect(conn, vm_name, TARGET, settings=CycleSettings(quiesce="try"))
    control.set_tools(vm_name, "notRunning")
    scatter(control, vm_name, random.Random(8), count=2)
    result = replicate(conn, vm_name, replica_access=access)
    source, replica = find(si, vm_name), find(si, f"{vm_name}-replica")
    assert result.restore_point == "rp-000002" and result.quiesced is False
    assert_replica_matches(lab, source, replica, "rp-000002")
    points = {p["id"]: p for p in state(replica)["restore_points"]}
    assert points["rp-000002"]["quiesced"] is False
    assert our_source_snapshots(source) == []


def test_quiesce_require_on_a_vm_without_tools_fails_naming_the_fault_and_leaves_no_snapshot(
    si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks
) -> None:
    protect(conn, vm_name, TARGET, settings=CycleSettings(quiesce="require"))
    control.set_tools(vm_name, "notRunning")
    with pytest.raises(TaskFailed) as err:
        replicate(conn, vm_name, replica_access=access)
    assert err.value.fault == "ToolsUnavailable"
    assert f"{vm_name} could not be quiesced (ToolsUnavailable)" in str(err.value)
    source, replica = find(si, vm_name), find(si, f"{vm_name}-replica")
    assert our_source_snapshots(source) == []
    assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001"]
    control.set_tools(vm_name, "running")
    scatter(control, vm_name, random.Random(9), count=2)
    result = replicate(conn, vm_name, replica_access=access)
    assert result.restore_point == "rp-000002" and result.quiesced is True, result
