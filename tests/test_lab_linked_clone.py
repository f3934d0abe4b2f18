"""Linked clones (CloneVM_Task, diskMoveType=createNewChildDiskBacking), checked with pyVmomi and qemu-img.

A linked clone's disks are vmfsSparse redo logs over the snapshot's layers,
whatever the lab's --redo-logs says; the module runs on a lab of each kind.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests import labutil
from vsphere_replicator.lab import LabControl, LabInfo, running_lab

pytestmark = pytest.mark.lab

MIB = 1 << 20
DISK_SIZE = 8 * MIB


@pytest.fixture(scope="module", params=[False, True], ids=["flat-snapshots", "redo-logs"])
def linked_lab(request: pytest.FixtureRequest) -> Iterator[tuple[LabInfo, Any, LabControl]]:
    with running_lab(vms=5, disks_per_vm=2, disk_size=DISK_SIZE, hosts=1, redo_logs=request.param) as info:
        si = labutil.connect(info)
        try:
            yield info, si, LabControl(info)
        finally:
            labutil.disconnect(si)


def image_sha(lab: LabInfo, file_name: str, tmp_path: Path) -> str:
    """The disk's bytes as qemu-img reads them through the chain."""
    raw = labutil.chain_image(lab, file_name, tmp_path / "image.raw")
    digest = labutil.sha256(raw)
    raw.unlink()
    return digest


def chain(lab: LabInfo, file_name: str) -> list[dict[str, Any]]:
    import json

    out = subprocess.run(
        [
            "qemu-img",
            "info",
            "--backing-chain",
            "--output=json",
            str(labutil.local_descriptor(lab, file_name)),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def linked_clone(si: Any, vm: Any, name: str, snapshot: Any | None, datastore: str | None = None) -> Any:
    dc = si.content.rootFolder.childEntity[0]
    location = vim.vm.RelocateSpec(diskMoveType="createNewChildDiskBacking")
    if datastore is not None:
        location.datastore = next(ds for ds in dc.datastore if ds.name == datastore)
    spec = vim.vm.CloneSpec(snapshot=snapshot, location=location, powerOn=False)
    return labutil.wait(vm.CloneVM_Task(folder=dc.vmFolder, name=name, spec=spec))


def write(control: LabControl, vm: str, offset: int, length: int, seed: int, disk: int = 0) -> bytes:
    data = random.Random(seed).randbytes(length)
    control.write(vm, data, offset=offset, disk=disk)
    return data


def layer_files(lab: LabInfo, file_name: str) -> list[Path]:
    descriptor = labutil.local_descriptor(lab, file_name)
    extents = [
        descriptor.with_name(descriptor.name.replace(".vmdk", s)) for s in ("-flat.vmdk", "-delta.vmdk")
    ]
    return [descriptor, *(e for e in extents if e.exists())]


def test_a_linked_clone_is_a_child_redo_log_over_the_snapshot(
    linked_lab: tuple[LabInfo, Any, LabControl], tmp_path: Path
) -> None:
    lab, si, control = linked_lab
    vm = labutil.find_vm(si, "lab-vm-0001")
    write(control, "lab-vm-0001", 0, 300_000, seed=1)
    write(control, "lab-vm-0001", 5 * MIB, 4096, seed=2, disk=1)
    snap = labutil.snapshot(vm, "restore-point")
    frozen = [d.backing for d in labutil.disks(snap)]
    frozen_sha = [image_sha(lab, b.fileName, tmp_path) for b in frozen]
    write(control, "lab-vm-0001", 100, 1000, seed=3)  # after the snapshot: never in the clone
    clone = linked_clone(si, vm, "lab-vm-0001-test", snap, datastore="secondary-ds")
    for index, (disk, parent) in enumerate(zip(labutil.disks(clone), frozen, strict=True)):
        backing = disk.backing
        assert backing.fileName.startswith("[secondary-ds] lab-vm-0001-test/")
        assert backing.deltaDiskFormat == "redoLogFormat"
        assert backing.parent.fileName == parent.fileName
        names, b = [], backing.parent
        while b is not None:
            names.append(b.fileName)
            b = b.parent
        expected, b = [], parent
        while b is not None:
            expected.append(b.fileName)
            b = b.parent
        assert names == expected
        descriptor = labutil.local_descriptor(lab, backing.fileName)
        assert 'createType="vmfsSparse"' in descriptor.read_text()
        assert (
            descriptor.with_name(descriptor.name.replace(".vmdk", "-delta.vmdk")).read_bytes()[:4] == b"COWD"
        )
        layers = chain(lab, backing.fileName)
        assert layers[0]["format-specific"]["data"]["create-type"] == "vmfsSparse"
        assert (
            Path(layers[1]["filename"]).resolve() == labutil.local_descriptor(lab, parent.fileName).resolve()
        )
        assert layers[0]["virtual-size"] == DISK_SIZE
        # Space: the clone holds its (empty) redo log only.
        assert layers[0]["actual-size"] < MIB
        assert image_sha(lab, backing.fileName, tmp_path) == frozen_sha[index]
    # The clone writes into its own redo log; the snapshot and the source do not see it.
    source_before = image_sha(lab, labutil.disks(vm)[0].backing.fileName, tmp_path)
    data = write(control, "lab-vm-0001-test", 2 * MIB, 65536, seed=4)
    clone_disk = labutil.disks(clone)[0].backing.fileName
    raw = labutil.chain_image(lab, clone_disk, tmp_path / "clone.raw")
    assert raw.read_bytes()[2 * MIB : 2 * MIB + 65536] == data
    assert chain(lab, clone_disk)[0]["actual-size"] < MIB
    assert image_sha(lab, frozen[0].fileName, tmp_path) == frozen_sha[0]
    assert image_sha(lab, labutil.disks(vm)[0].backing.fileName, tmp_path) == source_before
    labutil.wait(clone.PowerOnVM_Task())
    assert clone.runtime.powerState == "poweredOn"
    labutil.wait(clone.PowerOffVM_Task())
    labutil.wait(clone.Destroy_Task())


def test_a_linked_clone_needs_a_snapshot(linked_lab: tuple[LabInfo, Any, LabControl]) -> None:
    lab, si, _ = linked_lab
    vm = labutil.find_vm(si, "lab-vm-0002")
    with pytest.raises(vmodl.fault.InvalidArgument) as raised:
        linked_clone(si, vm, "lab-vm-0002-linked", None)
    assert raised.value.invalidProperty == "spec.location.diskMoveType"
    assert not (Path(lab.datastores["primary-ds"]) / "lab-vm-0002-linked").exists()


def test_shared_layers_outlive_the_snapshot_and_the_source_vm(
    linked_lab: tuple[LabInfo, Any, LabControl], tmp_path: Path
) -> None:
    lab, si, control = linked_lab
    vm = labutil.find_vm(si, "lab-vm-0003")
    write(control, "lab-vm-0003", 0, 200_000, seed=5)
    snap = labutil.snapshot(vm, "base")
    write(control, "lab-vm-0003", 0, 4096, seed=6)
    clone = linked_clone(si, vm, "lab-vm-0003-test", snap)
    clone_disks = [d.backing.fileName for d in labutil.disks(clone)]
    shared = [b.fileName for d in labutil.disks(clone) for b in [d.backing.parent]]
    before = [image_sha(lab, f, tmp_path) for f in clone_disks]
    # Removing the snapshot leaves the tree, but not the layers the clone reads through.
    labutil.wait(snap.RemoveSnapshot_Task(removeChildren=False))
    assert vm.snapshot is None
    assert all(p.exists() for f in shared for p in layer_files(lab, f))
    write(control, "lab-vm-0003", 0, 8192, seed=7)
    assert [image_sha(lab, f, tmp_path) for f in clone_disks] == before
    # Destroying the source deletes what the clone does not need and keeps the rest.
    source_disks = [d.backing.fileName for d in labutil.disks(vm)]
    labutil.wait(vm.PowerOffVM_Task())
    labutil.wait(vm.Destroy_Task())
    assert all(not labutil.local_descriptor(lab, f).exists() for f in source_disks if f not in shared)
    assert all(p.exists() for f in shared for p in layer_files(lab, f))
    assert [image_sha(lab, f, tmp_path) for f in clone_disks] == before
    write(control, "lab-vm-0003-test", MIB, 4096, seed=8)
    # The last clone takes the orphaned shared layers with it.
    labutil.wait(clone.Destroy_Task())
    assert all(not labutil.local_descriptor(lab, f).exists() for f in [*clone_disks, *shared])
    home = Path(lab.datastores["primary-ds"]) / "lab-vm-0003"
    assert not list(home.glob("*.vmdk"))  # glob finds nothing in a directory that is gone


def test_destroying_one_linked_clone_removes_only_its_own_files(
    linked_lab: tuple[LabInfo, Any, LabControl], tmp_path: Path
) -> None:
    lab, si, control = linked_lab
    vm = labutil.find_vm(si, "lab-vm-0004")
    write(control, "lab-vm-0004", 0, 100_000, seed=9)
    snap = labutil.snapshot(vm, "base")
    first = linked_clone(si, vm, "lab-vm-0004-a", snap)
    second = linked_clone(si, vm, "lab-vm-0004-b", snap)
    write(control, "lab-vm-0004-b", 0, 4096, seed=10)
    second_sha = image_sha(lab, labutil.disks(second)[0].backing.fileName, tmp_path)
    first_files = [p for d in labutil.disks(first) for p in layer_files(lab, d.backing.fileName)]
    snapshot_files = [p for d in labutil.disks(snap) for p in layer_files(lab, d.backing.fileName)]
    labutil.wait(first.Destroy_Task())
    assert not any(p.exists() for p in first_files)
    assert all(p.exists() for p in snapshot_files)
    assert image_sha(lab, labutil.disks(second)[0].backing.fileName, tmp_path) == second_sha
    # A full clone of the linked clone reads through its chain; a snapshot of it is a redo log too.
    copy = labutil.wait(
        second.CloneVM_Task(
            folder=si.content.rootFolder.childEntity[0].vmFolder,
            name="lab-vm-0004-full",
            spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec(), powerOn=False, template=False),
        )
    )
    full = labutil.disks(copy)[0].backing
    assert full.parent is None and labutil.local_extent(lab, full.fileName).exists()
    assert hashlib.sha256(labutil.local_extent(lab, full.fileName).read_bytes()).hexdigest() == second_sha
    snap_b = labutil.snapshot(second, "on-the-clone")
    top = labutil.disks(second)[0].backing
    assert (
        top.deltaDiskFormat == "redoLogFormat"
        and top.parent.fileName == labutil.disks(snap_b)[0].backing.fileName
    )
    assert image_sha(lab, top.fileName, tmp_path) == second_sha
    for gone in (copy, second):
        labutil.wait(gone.Destroy_Task())
    labutil.wait(vm.RemoveAllSnapshots_Task())
    assert all(
        p.exists() for p in [labutil.local_descriptor(lab, d.backing.fileName) for d in labutil.disks(vm)]
    )
