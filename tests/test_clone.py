"""Clones to a secondary datastore: right bytes, right place, refused when they cannot fit."""

from __future__ import annotations

from typing import Any, cast

import pytest
from pyVmomi import vim

from tests import labutil
from vsphere_replicator.clone import ClonePlacement, DiskPlacement, clone_name, clone_vm
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.inventory import get_vm, snapshot_disks
from vsphere_replicator.snapshots import create_snapshot


def test_clone_from_a_snapshot_to_the_secondary_datastore(
    lab: Any, conn: Any, si: Any, control: Any, vm_name: str
) -> None:
    control.write_random(vm_name, offset=1 << 20, length=500_000, seed=1)
    control.write_random(vm_name, offset=0, length=4096, seed=2, disk=1)
    snap = create_snapshot(conn, vm_name, "seed").snapshot
    control.write_random(vm_name, offset=1 << 20, length=10, seed=3)  # after the snapshot
    dc = si.content.rootFolder.childEntity[0]
    dc.vmFolder.CreateFolder(f"replicas-{vm_name}")
    host = dc.hostFolder.childEntity[0].host[-1].name
    placement = ClonePlacement(
        datastore="secondary-ds",
        host=host,
        resource_pool="Resources",
        folder=f"DC0/vm/replicas-{vm_name}",
        provisioning="thin",
        disks=(DiskPlacement(disk=2001, datastore="primary-ds", provisioning="thick-lazy"),),
    )
    clone = clone_vm(conn, vm_name, "{vm}-replica", placement, snapshot=snap)
    assert clone.name == f"{vm_name}-replica" and clone.power_state == "poweredOff"
    assert clone.host == host and clone.folder == f"DC0/vm/replicas-{vm_name}"
    assert [d.datastore for d in clone.disks] == ["secondary-ds", "primary-ds"]
    assert [d.provisioning for d in clone.disks] == ["thin", "thick-lazy"]
    for frozen, copy in zip(snapshot_disks(conn, snap.moref), clone.disks, strict=True):
        a, b = labutil.layer_image(lab, frozen.file_name), labutil.layer_image(lab, copy.file_name)
        assert labutil.sha256(a) == labutil.sha256(b)
        descriptors = [labutil.local_descriptor(lab, f) for f in (frozen.file_name, copy.file_name)]
        assert labutil.qemu_img_compare(*descriptors) == 0
    pyvmomi_clone = labutil.find_vm(si, f"replicas-{vm_name}/{vm_name}-replica")
    assert pyvmomi_clone.runtime.powerState == "poweredOff"


def test_a_clone_that_cannot_fit_is_refused_before_anything_happens(conn: Any, vm: Any, vm_name: str) -> None:
    huge = vim.vm.device.VirtualDisk(
        key=-1,
        controllerKey=labutil.disks(vm)[0].controllerKey,
        unitNumber=5,
        capacityInKB=8 << 30,
        capacityInBytes=8 << 40,  # 8 TiB, a sparse file on the lab's side
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            diskMode="persistent", thinProvisioned=True, fileName=""
        ),
    )
    change = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=huge)
    labutil.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[change])))
    try:
        placement = ClonePlacement(datastore="secondary-ds", provisioning="thick-eager")
        with pytest.raises(InvalidInput, match="bytes free"):
            clone_vm(conn, vm_name, "{vm}-too-big", placement)
        with pytest.raises(NotFound):
            get_vm(conn, f"{vm_name}-too-big")
    finally:
        # vcsim counts the 8 TiB against the datastore's free space: give it back, or a later test's
        # thick disk on that datastore is refused (the lab is shared, and the order is random).
        added = next(d for d in labutil.disks(vm) if d.unitNumber == 5)
        remove = vim.vm.device.VirtualDeviceSpec(operation="remove", fileOperation="destroy", device=added)
        labutil.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[remove])))


def test_bad_placements_and_names_are_refused(conn: Any, vm_name: str) -> None:
    with pytest.raises(NotFound, match="Datastore"):
        clone_vm(conn, vm_name, "x-{vm}", ClonePlacement(datastore="no-such-ds"))
    with pytest.raises(InvalidInput, match="already exists"):
        clone_vm(conn, vm_name, "lab-vm-0001", ClonePlacement(datastore="secondary-ds"))
    with pytest.raises(InvalidInput, match="provisioning"):
        clone_vm(
            conn, vm_name, "{vm}-p", ClonePlacement(datastore="secondary-ds", provisioning=cast(Any, "fat"))
        )
    with pytest.raises(InvalidInput, match="template"):
        clone_name("{nope}", get_vm(conn, vm_name))
