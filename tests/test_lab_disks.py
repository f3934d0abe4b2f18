"""Every lab disk is a real VMDK; guest writes land in the current state."""

from __future__ import annotations

import os
from typing import Any

import pytest
import requests

from tests import labutil
from tests.conftest import DISK_SIZE
from vsphere_replicator.lab import LabError


def test_each_disk_is_a_descriptor_and_a_sparse_flat_extent(lab: Any, vm: Any) -> None:
    for disk in labutil.disks(vm):
        descriptor = labutil.local_descriptor(lab, disk.backing.fileName)
        extent = labutil.local_extent(lab, disk.backing.fileName)
        assert descriptor.read_text().startswith("# Disk DescriptorFile")
        assert extent.stat().st_size == DISK_SIZE
        assert extent.stat().st_blocks * 512 < DISK_SIZE // 100  # sparse
        info = labutil.qemu_img_info(descriptor)
        assert info["format"] == "vmdk" and info["virtual-size"] == DISK_SIZE


def test_folder_serves_disk_bytes_with_range(
    lab: Any, si: Any, control: Any, off_vm: Any, off_vm_name: str
) -> None:
    data = control.write_random(off_vm_name, offset=12345, length=5000, seed=1)
    session = labutil.folder_session(lab, si)
    file_name = labutil.disks(off_vm)[0].backing.fileName
    assert labutil.read_range(session, lab, file_name, 12345, 5000) == data
    assert labutil.read_range(session, lab, file_name, 12340, 5) == b"\0" * 5


def test_folder_refuses_a_client_without_session(lab: Any, vm: Any) -> None:
    session = requests.Session()
    session.trust_env = False
    url, params = labutil.folder_url(lab, labutil.disks(vm)[0].backing.fileName)
    assert session.get(url, params=params, verify=lab.ca_file, timeout=10).status_code == 401


def test_guest_write_goes_to_the_chosen_disk(lab: Any, control: Any, vm: Any, vm_name: str) -> None:
    data = control.write_random(vm_name, offset=1 << 20, length=4096, seed=2, disk=1)
    second = labutil.local_extent(lab, labutil.disks(vm)[1].backing.fileName)
    first = labutil.local_extent(lab, labutil.disks(vm)[0].backing.fileName)
    with second.open("rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == data
    assert os.stat(first).st_blocks == 0


def test_a_write_past_the_end_is_refused_and_changes_nothing(
    lab: Any, control: Any, vm: Any, vm_name: str
) -> None:
    extent = labutil.local_extent(lab, labutil.disks(vm)[0].backing.fileName)
    before = labutil.sha256(extent)
    with pytest.raises(LabError, match="does not fit"):
        control.write(vm_name, b"x" * 10, offset=DISK_SIZE - 5)
    with pytest.raises(LabError, match="no VM named"):
        control.write("no-such-vm", b"x", offset=0)
    assert labutil.sha256(extent) == before


def grow_spec(disk: Any, capacity: int) -> Any:
    from pyVmomi import vim

    disk.capacityInBytes = capacity
    disk.capacityInKB = capacity // 1024
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    return vim.vm.ConfigSpec(deviceChange=[change])


def test_growing_a_disk_extends_its_extent(lab: Any, vm: Any) -> None:
    disk = labutil.disks(vm)[0]
    labutil.wait(vm.ReconfigVM_Task(grow_spec(disk, DISK_SIZE * 2)))
    grown = labutil.disks(vm)[0]
    assert grown.capacityInBytes == DISK_SIZE * 2
    assert labutil.local_extent(lab, grown.backing.fileName).stat().st_size == DISK_SIZE * 2
    assert labutil.qemu_img_info(labutil.local_descriptor(lab, grown.backing.fileName))["virtual-size"] == (
        DISK_SIZE * 2
    )


def test_shrinking_or_growing_under_snapshots_is_refused(lab: Any, vm: Any) -> None:
    from pyVmomi import vim

    with pytest.raises(vim.fault.InvalidDeviceOperation):
        labutil.wait(vm.ReconfigVM_Task(grow_spec(labutil.disks(vm)[0], DISK_SIZE // 2)))
    labutil.snapshot(vm, "pin")
    with pytest.raises(vim.fault.InvalidDeviceOperation):
        labutil.wait(vm.ReconfigVM_Task(grow_spec(labutil.disks(vm)[0], DISK_SIZE * 2)))
    assert labutil.disks(vm)[0].capacityInBytes == DISK_SIZE


def test_deleting_a_detached_redo_log_removes_its_descriptor_and_delta_and_keeps_its_parent(
    lab: Any, si: Any, off_vm: Any
) -> None:
    """VirtualDiskManager.DeleteVirtualDisk_Task deletes all of a disk's files: for a redo log its
    descriptor and `-delta.vmdk`, never the snapshot's layer under it (vcsim alone found no flat file)."""
    from pyVmomi import vim, vmodl

    labutil.snapshot(off_vm, "kept")
    disk = labutil.disks(off_vm)[1]
    layer, parent = disk.backing.fileName, disk.backing.parent.fileName
    delta = labutil.local_descriptor(lab, layer).with_name(
        labutil.local_descriptor(lab, layer).name.replace(".vmdk", "-delta.vmdk")
    )
    assert delta.exists()
    detach = vim.vm.device.VirtualDeviceSpec(operation="remove", device=disk)  # no fileOperation: kept
    labutil.wait(off_vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[detach])))
    with pytest.raises(vmodl.fault.InvalidArgument):  # on vCenter a datastore path needs its datacenter
        si.content.virtualDiskManager.DeleteVirtualDisk_Task(name=layer)
    assert delta.exists()
    datacenter = si.content.rootFolder.childEntity[0]
    labutil.wait(si.content.virtualDiskManager.DeleteVirtualDisk_Task(name=layer, datacenter=datacenter))
    assert not labutil.local_descriptor(lab, layer).exists() and not delta.exists()
    assert labutil.qemu_img_info(labutil.local_descriptor(lab, parent))["virtual-size"] == DISK_SIZE
    with pytest.raises(vim.fault.FileNotFound):
        labutil.wait(si.content.virtualDiskManager.DeleteVirtualDisk_Task(name=layer, datacenter=datacenter))
