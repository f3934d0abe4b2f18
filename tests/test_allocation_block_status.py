"""A full read's areas from NBD block status when CBT's changeId="*" fails (VDDK's non-VMFS case).

The lab's VDDK stand-in answers block status from the frozen layer's holes,
as nbdkit-vddk does from VDDK's allocated blocks; `qemu-img map` over the
same layer file is the independent reader.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests import labutil
from tests.replication_util import assert_replica_matches, find, state
from tests.test_vddk import vr
from vsphere_replicator.cbt import ALL_ALLOCATED, changed_areas, enable_cbt
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import VSphereFault
from vsphere_replicator.extents import Extent, merge_extents
from vsphere_replicator.inventory import snapshot_disks
from vsphere_replicator.lab import LabInfo, vddk_standin
from vsphere_replicator.replication import HTTPDatastores, VDDKDisks
from vsphere_replicator.replication.allocation import allocated_areas
from vsphere_replicator.snapshots import create_snapshot

pytestmark = pytest.mark.lab

MIB = 1 << 20


def layer_data(path: Path) -> tuple[Extent, ...]:
    done = subprocess.run(
        ["qemu-img", "map", "-f", "raw", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return merge_extents(Extent(e["start"], e["length"]) for e in json.loads(done.stdout) if not e["zero"])


def test_a_failing_star_query_takes_the_vddk_disks_block_status(
    lab: LabInfo, conn: Connection, control: Any, vm_name: str, tmp_path: Path
) -> None:
    info = enable_cbt(conn, vm_name)
    control.write_random(vm_name, offset=3 * MIB, length=700_000, seed=1)
    control.write_random(vm_name, offset=20 * MIB, length=100_000, seed=2)
    snap = create_snapshot(conn, info, "allocation").snapshot
    disk = snapshot_disks(conn, snap.moref)[0]
    expected = layer_data(labutil.local_extent(lab, disk.file_name))
    assert sum(e.length for e in expected) < disk.capacity  # a sparse disk: the map says something
    access = VDDKDisks(conn, plugin=str(vddk_standin()), libdir=str(tmp_path))
    control.fail_method("QueryChangedDiskAreas", "FileFault", count=1)
    with structlog.testing.capture_logs() as logs:
        areas, total = allocated_areas(conn, info, snap, disk.key, access)
    assert areas == expected
    assert total == sum(e.length for e in expected)
    assert any(e["event"] == "allocation_from_block_status" and e["cbt"] == "fault" for e in logs)
    assert any(a.start <= 3 * MIB and a.end >= 3 * MIB + 700_000 for a in areas)


def test_a_whole_disk_star_answer_takes_the_vddk_disks_block_status(
    lab: LabInfo, conn: Connection, control: Any, vm_name: str, tmp_path: Path
) -> None:
    """As on NFS: changeId="*" answers one extent covering the disk; block status says what is in it."""
    info = enable_cbt(conn, vm_name)
    control.write_random(vm_name, offset=2 * MIB, length=500_000, seed=3)
    snap = create_snapshot(conn, info, "whole-disk").snapshot
    disk = snapshot_disks(conn, snap.moref)[0]
    expected = layer_data(labutil.local_extent(lab, disk.file_name))
    access = VDDKDisks(conn, plugin=str(vddk_standin()), libdir=str(tmp_path))
    control.set_star_answer("primary-ds", "whole")
    try:
        whole = changed_areas(conn, info, snap, disk.key, ALL_ALLOCATED)
        assert whole.areas == (Extent(0, disk.capacity),)  # what the lab now answers for "*"
        with structlog.testing.capture_logs() as logs:
            areas, total = allocated_areas(conn, info, snap, disk.key, access)
        # Without an allocation map (the HTTP source), the whole-disk answer stands.
        plain = allocated_areas(conn, info, snap, disk.key, HTTPDatastores(conn, lab.datacenter))
    finally:
        control.set_star_answer("primary-ds")  # back to the VMFS default for the other tests
    assert areas == expected
    assert total == sum(e.length for e in expected) < disk.capacity
    assert any(e["event"] == "allocation_from_block_status" and e["cbt"] == "whole disk" for e in logs)
    assert plain == ((Extent(0, disk.capacity),), disk.capacity)
    assert control.datastores()["primary-ds"]["star_answer"] == "allocated"


def test_without_an_allocation_map_the_fault_stands(
    lab: LabInfo, conn: Connection, control: Any, vm_name: str
) -> None:
    info = enable_cbt(conn, vm_name)
    snap = create_snapshot(conn, info, "no-map").snapshot
    disk = snapshot_disks(conn, snap.moref)[0]
    control.fail_method("QueryChangedDiskAreas", "SystemError", count=1)
    with pytest.raises(VSphereFault, match="SystemError"):
        allocated_areas(conn, info, snap, disk.key, HTTPDatastores(conn, lab.datacenter))


def test_a_resync_through_vddk_reads_the_allocation_map_when_star_fails(
    lab: LabInfo, si: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    vr(lab, tmp_path, "protect", vm_name, "--datastore", "secondary-ds")
    for disk in (0, 1):
        control.write_random(vm_name, offset=(5 + disk) * MIB, length=300_000, disk=disk)
    control.cbt_reset(vm_name)  # every disk resyncs: a full read, changeId="*"
    control.fail_method("QueryChangedDiskAreas", "FileFault", count=2)
    done = vr(lab, tmp_path, "replicate", vm_name)
    assert done.stderr.count("change_id_invalid") == 2  # both "*" queries were refused
    capacity = sum(d.capacityInBytes for d in labutil.disks(find(si, vm_name)))
    result = json.loads(done.stdout)
    # Read from the stand-in's allocation map: the written areas, not every byte of both disks.
    assert 600_000 <= result["bytes_moved"] < capacity // 4
    replica = find(si, f"{vm_name}-replica")
    points = [p["id"] for p in state(replica)["restore_points"]]
    assert_replica_matches(lab, find(si, vm_name), replica, points[-1])
