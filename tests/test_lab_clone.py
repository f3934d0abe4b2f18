"""Clones copy bytes, from the right point in time, to the right place."""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil


def datastore(si: Any, name: str) -> Any:
    dc = si.content.rootFolder.childEntity[0]
    return next(ds for ds in dc.datastore if ds.name == name)


def clone(si: Any, vm: Any, name: str, **spec: Any) -> Any:
    dc = si.content.rootFolder.childEntity[0]
    return labutil.wait(vm.CloneVM_Task(folder=dc.vmFolder, name=name, spec=vim.vm.CloneSpec(**spec)))


def test_clone_from_snapshot_holds_the_frozen_bytes(
    lab: Any, si: Any, control: Any, vm: Any, vm_name: str
) -> None:
    control.write_random(vm_name, offset=0, length=300_000, seed=1)
    control.write_random(vm_name, offset=7 << 20, length=4096, seed=2, disk=1)
    snap = labutil.snapshot(vm, "seed")
    control.write_random(vm_name, offset=100, length=1000, seed=3)  # must not reach the clone
    secondary = datastore(si, "secondary-ds")
    copy = clone(
        si,
        vm,
        f"{vm_name}-replica",
        snapshot=snap,
        powerOn=False,
        location=vim.vm.RelocateSpec(datastore=secondary),
    )
    assert copy.runtime.powerState == "poweredOff"
    assert [ds.name for ds in copy.datastore] == ["secondary-ds"]
    for source, target in zip(labutil.disks(snap), labutil.disks(copy), strict=True):
        assert target.backing.fileName.startswith("[secondary-ds] ")
        assert target.capacityInBytes == source.capacityInBytes
        a = labutil.layer_image(lab, source.backing.fileName)
        b = labutil.layer_image(lab, target.backing.fileName)
        assert labutil.sha256(a) == labutil.sha256(b)
        assert (
            labutil.qemu_img_compare(
                labutil.local_descriptor(lab, source.backing.fileName),
                labutil.local_descriptor(lab, target.backing.fileName),
            )
            == 0
        )
    live = labutil.layer_image(lab, labutil.disks(vm)[0].backing.fileName)
    assert labutil.sha256(live) != labutil.sha256(
        labutil.layer_image(lab, labutil.disks(copy)[0].backing.fileName)
    )


def test_clone_honours_host_pool_folder_and_per_disk_placement(si: Any, vm: Any, vm_name: str) -> None:
    dc = si.content.rootFolder.childEntity[0]
    cluster = dc.hostFolder.childEntity[0]
    host = cluster.host[-1]
    folder = dc.vmFolder.CreateFolder(f"replicas-{vm_name}")
    primary, secondary = datastore(si, "primary-ds"), datastore(si, "secondary-ds")
    second_disk = labutil.disks(vm)[1]
    locator = vim.vm.RelocateSpec.DiskLocator(diskId=second_disk.key, datastore=primary)
    spec = vim.vm.CloneSpec(
        powerOn=False,
        location=vim.vm.RelocateSpec(
            datastore=secondary, host=host, pool=cluster.resourcePool, disk=[locator]
        ),
    )
    copy = labutil.wait(vm.CloneVM_Task(folder=folder, name=f"{vm_name}-placed", spec=spec))
    assert copy.runtime.host == host
    assert copy.resourcePool == cluster.resourcePool
    assert copy.parent == folder
    names = [d.backing.fileName for d in labutil.disks(copy)]
    assert names[0].startswith("[secondary-ds] ") and names[1].startswith("[primary-ds] ")


def test_clone_without_snapshot_copies_the_current_state(
    lab: Any, si: Any, control: Any, vm: Any, vm_name: str
) -> None:
    control.write_random(vm_name, offset=4096, length=4096, seed=5)
    copy = clone(si, vm, f"{vm_name}-now", powerOn=False, location=vim.vm.RelocateSpec())
    a = labutil.layer_image(lab, labutil.disks(vm)[0].backing.fileName)
    b = labutil.layer_image(lab, labutil.disks(copy)[0].backing.fileName)
    assert labutil.sha256(a) == labutil.sha256(b)


def test_clone_to_a_taken_name_fails(si: Any, vm: Any, vm_name: str) -> None:
    with pytest.raises(vim.fault.DuplicateName):
        clone(si, vm, "lab-vm-0001", powerOn=False, location=vim.vm.RelocateSpec())


def test_a_clone_task_names_its_method_as_vcenter_does(si: Any, vm: Any, vm_name: str) -> None:
    dc = si.content.rootFolder.childEntity[0]
    task = vm.CloneVM_Task(
        folder=dc.vmFolder, name=f"{vm_name}-named", spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec())
    )
    labutil.wait(task)
    assert task.info.name.info.wsdlName == "CloneVM_Task"  # pyVmomi resolves it at any state
    assert task.info.descriptionId == "VirtualMachine.clone"
    assert task.info.entity == vm
