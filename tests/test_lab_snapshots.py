"""Snapshots behave as on vSphere: data frozen, deltas chained, merges lossless."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from tests.conftest import DISK_SIZE

WRITES = [(0, 70_000), (1 << 20, 4096), (5 << 20, 200_000), (DISK_SIZE - 4096, 4096)]


def write_and_track(
    control: Any, vm_name: str, image: bytearray, offset: int, length: int, seed: int
) -> None:
    data = control.write_random(vm_name, offset=offset, length=length, seed=seed)
    image[offset : offset + length] = data


def image_of(lab: Any, file_name: str) -> bytes:
    return labutil.layer_image(lab, file_name).read_bytes()


def test_snapshot_moves_the_vm_to_a_delta_whose_parent_is_the_old_disk(vm: Any) -> None:
    bases = [d.backing.fileName for d in labutil.disks(vm)]
    assert bases[1].endswith("_1.vmdk")  # e.g. lab-vm-0004_1.vmdk: not a delta of "lab-vm"
    snap = labutil.snapshot(vm, "s1")
    for base, disk, frozen in zip(bases, labutil.disks(vm), labutil.disks(snap), strict=True):
        assert disk.backing.fileName == base.replace(".vmdk", "-000001.vmdk")
        assert disk.backing.parent.fileName == base
        assert frozen.backing.fileName == base


def test_data_stays_frozen_across_a_chain_of_three_snapshots(
    lab: Any, control: Any, vm: Any, vm_name: str
) -> None:
    image = bytearray(DISK_SIZE)
    expected, snaps = [], []
    for i, (offset, length) in enumerate(WRITES[:3]):
        write_and_track(control, vm_name, image, offset, length, seed=i)
        snaps.append(labutil.snapshot(vm, f"s{i}"))
        expected.append(bytes(image))
    write_and_track(control, vm_name, image, 0, 100, seed=99)  # after the last snapshot
    for snap, frozen in zip(snaps, expected, strict=True):
        assert image_of(lab, labutil.disks(snap)[0].backing.fileName) == frozen
    current = labutil.disks(vm)[0].backing
    assert image_of(lab, current.fileName) == bytes(image)
    chain = []
    while current is not None:
        chain.append(current.fileName)
        current = current.parent
    assert len(chain) == 4
    assert labutil.qemu_img_info(labutil.local_descriptor(lab, chain[0]))["virtual-size"] == DISK_SIZE


def test_revert_brings_back_the_snapshot_data_and_powers_off(
    lab: Any, control: Any, vm: Any, vm_name: str
) -> None:
    image = bytearray(DISK_SIZE)
    write_and_track(control, vm_name, image, 4096, 8192, seed=1)
    snap = labutil.snapshot(vm, "before")
    frozen = bytes(image)
    control.write_random(vm_name, offset=0, length=65536, seed=2)
    labutil.wait(snap.RevertToSnapshot_Task())
    assert vm.runtime.powerState == "poweredOff"
    assert image_of(lab, labutil.disks(vm)[0].backing.fileName) == frozen
    assert vm.snapshot.currentSnapshot == snap


def test_removing_a_middle_snapshot_loses_no_data(lab: Any, control: Any, vm: Any, vm_name: str) -> None:
    image = bytearray(DISK_SIZE)
    write_and_track(control, vm_name, image, 0, 4096, seed=1)
    s1 = labutil.snapshot(vm, "s1")
    write_and_track(control, vm_name, image, 8192, 4096, seed=2)
    s2 = labutil.snapshot(vm, "s2")
    s2_data = bytes(image)
    write_and_track(control, vm_name, image, 16384, 4096, seed=3)
    s3 = labutil.snapshot(vm, "s3")
    s3_data = bytes(image)
    write_and_track(control, vm_name, image, 32768, 4096, seed=4)
    labutil.wait(s2.RemoveSnapshot_Task(removeChildren=False))
    assert [s.name for s in vm.snapshot.rootSnapshotList] == ["s1"]
    assert [c.name for c in vm.snapshot.rootSnapshotList[0].childSnapshotList] == ["s3"]
    assert image_of(lab, labutil.disks(s3)[0].backing.fileName) == s3_data
    assert image_of(lab, labutil.disks(vm)[0].backing.fileName) == bytes(image)
    assert s2_data != s3_data
    labutil.wait(s1.RemoveSnapshot_Task(removeChildren=True))
    assert vm.snapshot is None
    base = labutil.disks(vm)[0].backing
    assert base.fileName.endswith(f"{vm_name}.vmdk") and base.parent is None
    assert image_of(lab, base.fileName) == bytes(image)


def test_remove_all_consolidates_into_the_base_disk(lab: Any, control: Any, vm: Any, vm_name: str) -> None:
    image = bytearray(DISK_SIZE)
    rng = random.Random(7)
    for i in range(4):
        write_and_track(control, vm_name, image, rng.randrange(0, DISK_SIZE - 9000), 9000, seed=i)
        labutil.snapshot(vm, f"s{i}")
    labutil.wait(vm.RemoveAllSnapshots_Task())
    assert vm.snapshot is None
    base = labutil.disks(vm)[0].backing.fileName
    assert base == f"[primary-ds] {vm_name}/{vm_name}.vmdk"
    assert image_of(lab, base) == bytes(image)
    leftovers = [p.name for p in labutil.local_extent(lab, base).parent.iterdir() if "-0000" in p.name]
    assert leftovers == []


def test_the_chain_stops_at_32_levels(vm: Any) -> None:
    for i in range(32):
        labutil.snapshot(vm, f"level-{i}")
    with pytest.raises(vim.fault.TooManySnapshotLevels):
        labutil.snapshot(vm, "one-too-many")
    labutil.wait(vm.RemoveAllSnapshots_Task())
    assert vm.snapshot is None


def test_memory_snapshot_reverts_to_a_running_vm(vm: Any) -> None:
    snap = labutil.snapshot(vm, "with-memory", memory=True)
    labutil.wait(vm.PowerOffVM_Task())
    labutil.wait(snap.RevertToSnapshot_Task())
    assert vm.runtime.powerState == "poweredOn"
