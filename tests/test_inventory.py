"""Inventory reads: plain data that matches what pyVmomi sees, in few round trips."""

from __future__ import annotations

from typing import Any

import pytest

from tests import labutil
from tests.conftest import LAB_VMS
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.inventory import VMInfo, VMSelector, find_vms, get_vm, read_inventory


def test_a_vm_picture_matches_pyvmomi(conn: Any, si: Any, vm: Any, vm_name: str) -> None:
    labutil.snapshot(vm, "one")
    info = get_vm(conn, vm_name)
    assert isinstance(info, VMInfo)
    assert info.moref == vm._moId and info.instance_uuid == vm.config.instanceUuid
    assert info.power_state == vm.runtime.powerState and info.host == vm.runtime.host.name
    assert info.resource_pool == vm.resourcePool.name and info.folder == "DC0/vm"
    assert info.datastores == tuple(ds.name for ds in vm.datastore)
    expected = [(d.key, d.capacityInBytes, d.backing.fileName) for d in labutil.disks(vm)]
    assert [(d.key, d.capacity, d.file_name) for d in info.disks] == expected
    assert info.disks[0].label == "Hard disk 1" and info.disks[0].provisioning == "thin"
    assert [s.name for s in info.all_snapshots()] == ["one"]
    assert info.current_snapshot == vm.snapshot.currentSnapshot._moId
    assert info.cbt_enabled is False and info.consolidation_needed is False


def test_read_inventory_uses_at_most_five_round_trips(conn: Any, control: Any) -> None:
    control.reset_stats()
    vms = read_inventory(conn)
    assert len([v for v in vms if v.name.startswith("lab-vm-")]) >= LAB_VMS
    assert control.stats()["soap_requests"] <= 5


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (VMSelector(name="lab-vm-0002"), ["lab-vm-0002"]),
        (VMSelector(glob="lab-vm-001[0-2]"), ["lab-vm-0010", "lab-vm-0011", "lab-vm-0012"]),
    ],
)
def test_find_by_name_and_glob(conn: Any, selector: VMSelector, expected: list[str]) -> None:
    assert [v.name for v in find_vms(conn, selector)] == expected


def test_find_by_moref_and_instance_uuid(conn: Any, vm: Any, vm_name: str) -> None:
    assert get_vm(conn, VMSelector(moref=vm._moId)).name == vm_name
    assert get_vm(conn, VMSelector(instance_uuid=vm.config.instanceUuid.upper())).name == vm_name


def test_find_by_folder_path(conn: Any, si: Any, vm: Any, vm_name: str) -> None:
    dc = si.content.rootFolder.childEntity[0]
    folder = dc.vmFolder.CreateFolder(f"team-{vm_name}")
    labutil.wait(folder.MoveIntoFolder_Task([vm]))
    found = find_vms(conn, VMSelector(folder=f"DC0/vm/team-{vm_name}"))
    assert [v.name for v in found] == [vm_name]
    assert found[0].path == f"DC0/vm/team-{vm_name}/{vm_name}"


def test_nothing_found_and_ambiguity_are_errors(conn: Any) -> None:
    with pytest.raises(NotFound, match="no-such-vm"):
        get_vm(conn, "no-such-vm")
    with pytest.raises(InvalidInput, match="VMs match"):
        get_vm(conn, VMSelector(glob="lab-vm-*"))
    with pytest.raises(InvalidInput):
        VMSelector()
