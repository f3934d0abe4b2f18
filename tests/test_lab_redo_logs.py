"""A lab whose snapshots are redo logs, as ESXi writes them on VMFS (`lab up --redo-logs`).

Each snapshot puts a vmfsSparse descriptor over a COWD `-delta.vmdk` extent on
every disk; the base disk stays flat. Everything is checked from outside the
library: pyVmomi for the backings, qemu-img for the files (it reads the
chains through parentFileNameHint), byte models for the contents.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from tests.replication_util import chain_sha, find
from tests.test_vddk import hard_edges_through_vddk
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import get_vm, snapshot_disks
from vsphere_replicator.lab import LabControl, LabInfo, running_lab
from vsphere_replicator.replication import HTTPDatastores, MountedDatastores
from vsphere_replicator.snapshots import create_snapshot, remove_snapshot
from vsphere_replicator.transport.base import BlockSource

pytestmark = pytest.mark.lab

MIB = 1 << 20
DISK_SIZE = 32 * MIB


@pytest.fixture(scope="module")
def redo_lab() -> Iterator[LabInfo]:
    with running_lab(
        vms=8,
        disks_per_vm=2,
        disk_size=DISK_SIZE,
        cbt_window=4 * MIB,
        redo_logs=True,
        datastore_kinds={"vsan-ds": "vsan"},
    ) as info:
        yield info


@pytest.fixture(scope="module")
def redo_si(redo_lab: LabInfo) -> Iterator[Any]:
    si = labutil.connect(redo_lab)
    yield si
    labutil.disconnect(si)


@pytest.fixture(scope="module")
def redo_control(redo_lab: LabInfo) -> LabControl:
    return LabControl(redo_lab)


@pytest.fixture
def redo_conn(redo_lab: LabInfo) -> Iterator[Connection]:
    from tests.conftest import lab_connection

    with lab_connection(redo_lab) as connection:
        yield connection


def qemu_chain(lab: LabInfo, file_name: str) -> list[dict[str, Any]]:
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
    chain: list[dict[str, Any]] = json.loads(out.stdout)
    return chain


def image(lab: LabInfo, file_name: str, tmp_path: Path) -> bytes:
    raw = labutil.chain_image(lab, file_name, tmp_path / "image.raw")
    data = raw.read_bytes()
    raw.unlink()
    return data


def write(control: LabControl, vm: str, model: bytearray, offset: int, length: int, seed: int) -> None:
    data = random.Random(seed).randbytes(length)
    control.write(vm, data, offset=offset)
    model[offset : offset + length] = data


def test_a_snapshot_puts_a_vmfs_sparse_redo_log_over_each_disk(redo_lab: LabInfo, redo_si: Any) -> None:
    vm = labutil.find_vm(redo_si, "lab-vm-0001")
    bases = [d.backing.fileName for d in labutil.disks(vm)]
    labutil.snapshot(vm, "first")
    labutil.snapshot(vm, "second")
    for disk, base in zip(labutil.disks(vm), bases, strict=True):
        backing = disk.backing
        assert (
            backing.deltaDiskFormat == "redoLogFormat" and backing.parent.deltaDiskFormat == "redoLogFormat"
        )
        assert backing.parent.parent.fileName == base and backing.parent.parent.deltaDiskFormat is None
        descriptor = labutil.local_descriptor(redo_lab, backing.fileName)
        text = descriptor.read_text()
        assert 'createType="vmfsSparse"' in text and " VMFSSPARSE " in text
        delta = descriptor.with_name(descriptor.name.replace(".vmdk", "-delta.vmdk"))
        assert delta.read_bytes()[:4] == b"COWD"
        assert not descriptor.with_name(descriptor.name.replace(".vmdk", "-flat.vmdk")).exists()
        chain = qemu_chain(redo_lab, backing.fileName)
        assert [c["format"] for c in chain] == ["vmdk"] * 3
        assert chain[0]["format-specific"]["data"]["create-type"] == "vmfsSparse"
        assert chain[2]["format-specific"]["data"]["create-type"] == "vmfs"
        assert chain[0]["virtual-size"] == DISK_SIZE
        assert chain[0]["actual-size"] < MIB  # an empty redo log: header and grain directory only


def test_writes_land_in_the_redo_log_and_read_through_the_chain(
    redo_lab: LabInfo, redo_si: Any, redo_control: LabControl, tmp_path: Path
) -> None:
    vm = labutil.find_vm(redo_si, "lab-vm-0002")
    base = labutil.disks(vm)[0].backing.fileName
    model = bytearray(image(redo_lab, base, tmp_path))
    write(redo_control, "lab-vm-0002", model, 5 * MIB, 300_000, seed=1)
    frozen = bytes(model)
    base_sha = labutil.sha256(labutil.local_extent(redo_lab, base))
    labutil.snapshot(vm, "frozen")
    write(redo_control, "lab-vm-0002", model, 5 * MIB + 777, 1000, seed=2)  # partial grains at both ends
    write(redo_control, "lab-vm-0002", model, 20 * MIB, 3 * MIB, seed=3)  # across grain tables
    current = labutil.disks(vm)[0].backing.fileName
    assert image(redo_lab, current, tmp_path) == bytes(model)
    assert image(redo_lab, base, tmp_path) == frozen  # the snapshot's layer did not move
    assert labutil.sha256(labutil.local_extent(redo_lab, base)) == base_sha
    delta = labutil.local_descriptor(redo_lab, current)
    assert delta.with_name(delta.name.replace(".vmdk", "-delta.vmdk")).stat().st_size < 4 * MIB

    labutil.wait(vm.snapshot.rootSnapshotList[0].snapshot.RemoveSnapshot_Task(removeChildren=False))
    folded = labutil.disks(vm)[0].backing
    assert folded.fileName == base and folded.parent is None
    assert image(redo_lab, base, tmp_path) == bytes(model)  # consolidation wrote the grains into the base
    assert not delta.exists() and not delta.with_name(delta.name.replace(".vmdk", "-delta.vmdk")).exists()


def test_a_revert_starts_an_empty_redo_log_on_the_snapshots_layer(
    redo_lab: LabInfo, redo_si: Any, redo_control: LabControl, tmp_path: Path
) -> None:
    vm = labutil.find_vm(redo_si, "lab-vm-0003")
    snap = labutil.snapshot(vm, "before")
    frozen = image(redo_lab, labutil.disks(snap)[1].backing.fileName, tmp_path)
    redo_control.write_random("lab-vm-0003", offset=MIB, length=500_000, seed=4, disk=1)
    labutil.wait(snap.RevertToSnapshot_Task())
    current = labutil.disks(vm)[1].backing
    assert current.deltaDiskFormat == "redoLogFormat"
    assert image(redo_lab, current.fileName, tmp_path) == frozen
    assert qemu_chain(redo_lab, current.fileName)[0]["actual-size"] < MIB


def test_a_full_clone_and_a_storage_vmotion_carry_the_chain(
    redo_lab: LabInfo, redo_si: Any, redo_control: LabControl, tmp_path: Path
) -> None:
    vm = labutil.find_vm(redo_si, "lab-vm-0004")
    labutil.snapshot(vm, "one")
    redo_control.write_random("lab-vm-0004", offset=2 * MIB, length=700_000, seed=5)
    expected = [chain_sha(redo_lab, d.backing.fileName) for d in labutil.disks(vm)]
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(), powerOn=False)
    clone = labutil.wait(vm.CloneVM_Task(folder=vm.parent, name="lab-vm-0004-copy", spec=spec))
    try:
        copied = labutil.disks(clone)
        assert all(d.backing.parent is None and d.backing.deltaDiskFormat is None for d in copied)
        assert [
            labutil.sha256(labutil.local_extent(redo_lab, d.backing.fileName)) for d in copied
        ] == expected
    finally:
        labutil.wait(clone.Destroy_Task())
    secondary = next(ds for ds in vm.runtime.host.datastore if ds.name == "secondary-ds")
    labutil.wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(datastore=secondary)))
    moved = labutil.disks(vm)
    assert all(d.backing.fileName.startswith("[secondary-ds] ") for d in moved)
    assert [chain_sha(redo_lab, d.backing.fileName) for d in moved] == expected
    assert all(
        c["filename"].startswith(redo_lab.datastores["secondary-ds"])
        for c in qemu_chain(redo_lab, moved[0].backing.fileName)
    )


def test_http_and_mounts_refuse_a_redo_log_and_name_vddk(redo_lab: LabInfo, redo_conn: Connection) -> None:
    """A VM carrying someone else's snapshot: our snapshot's layer is a redo log."""
    info = get_vm(redo_conn, "lab-vm-0005")
    theirs = create_snapshot(redo_conn, info, "someone-elses").snapshot
    ours = create_snapshot(redo_conn, get_vm(redo_conn, "lab-vm-0005"), "ours").snapshot
    try:
        frozen = snapshot_disks(redo_conn, ours.moref)
        assert {d.delta_format for d in frozen} == {"redoLogFormat"}
        http = HTTPDatastores(redo_conn, redo_lab.datacenter)
        mounts = MountedDatastores(dict(redo_lab.datastores))
        for disk in frozen:
            with pytest.raises(InvalidInput, match=r"redoLogFormat.*--transport vddk"):
                source: BlockSource = http.source(disk, vm=info.moref, snapshot=ours.moref)
                source.close()
            with pytest.raises(InvalidInput, match=r"redoLogFormat.*--transport vddk"):
                mounts.check(disk)
    finally:
        for snap in (ours, theirs):
            remove_snapshot(redo_conn, get_vm(redo_conn, "lab-vm-0005"), snap)


def test_the_hard_edges_through_vddk_on_redo_logs_with_a_disk_on_vsan(
    redo_lab: LabInfo, redo_si: Any, redo_control: LabControl, tmp_path: Path
) -> None:
    """The issue's whole scenario: a running VM with one disk on a vSAN-like datastore, no mount."""
    vm = labutil.find_vm(redo_si, "lab-vm-0006")
    vsan = next(ds for ds in vm.runtime.host.datastore if ds.name == "vsan-ds")
    second = labutil.disks(vm)[1]
    spec = vim.vm.RelocateSpec(disk=[vim.vm.RelocateSpec.DiskLocator(diskId=second.key, datastore=vsan)])
    labutil.wait(vm.RelocateVM_Task(spec=spec))
    assert [d.backing.fileName.split("]")[0] for d in labutil.disks(vm)] == ["[primary-ds", "[vsan-ds"]
    assert vm.runtime.powerState == "poweredOn"
    hard_edges_through_vddk(redo_lab, redo_si, redo_control, "lab-vm-0006", tmp_path)
    replica = find(redo_si, "lab-vm-0006-replica")
    assert labutil.disks(replica)[0].backing.deltaDiskFormat == "redoLogFormat"  # restore points as redo logs
