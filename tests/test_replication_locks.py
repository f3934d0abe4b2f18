"""Cycles through the VDDK stand-in against a lab that locks what a data path holds open.

The lab refuses to remove a snapshot whose disk a VDDK session still serves
(FileLocked, as ESXi does), so a cycle that removed its source snapshot
before closing its devices would fail here. A Storage vMotion of the source
between cycles moves every file; the next cycle finds its disks by uuid and
reads only what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from pyVmomi import vim

from tests import labutil
from tests.replication_util import assert_replica_matches, find, our_source_snapshots, state
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import VSphereFault
from vsphere_replicator.inventory import DiskInfo
from vsphere_replicator.lab import LabInfo, vddk_standin
from vsphere_replicator.replication import ReplicaTarget, VDDKDisks, protect, replicate
from vsphere_replicator.transport.base import BlockSource

pytestmark = pytest.mark.lab

MIB = 1 << 20
TARGET = ReplicaTarget(datastore="secondary-ds")


def sessions_of(control: Any, vm: Any) -> list[dict[str, Any]]:
    return [s for s in control.disk_sessions() if s["vm"] == vm._moId]


def test_a_cycle_closes_its_vddk_devices_before_removing_its_snapshot(
    lab: LabInfo, conn: Connection, si: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    access = VDDKDisks(conn, plugin=str(vddk_standin()), libdir=str(tmp_path))
    protect(conn, vm_name, TARGET)
    control.write_random(vm_name, offset=2 * MIB, length=500_000, seed=3, disk=1)
    with structlog.testing.capture_logs() as logs:
        result = replicate(conn, vm_name, replica_access=access, source_access=access)
    busy = [e for e in logs if e["event"] in ("task_busy_retry", "task_failed")]
    assert busy == [], busy  # not one FileLocked on the way, not even a retried one
    source = find(si, vm_name)
    assert sessions_of(control, source) == []
    assert our_source_snapshots(source) == []
    assert_replica_matches(lab, source, find(si, f"{vm_name}-replica"), result.restore_point)


class HeldOpen(VDDKDisks):
    """Source devices whose close does nothing until `release`: a cycle that removes its snapshot early."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closes: list[Callable[[], None]] = []

    def source(self, disk: DiskInfo, *, vm: str, snapshot: str | None = None) -> BlockSource:
        device = super().source(disk, vm=vm, snapshot=snapshot)
        self.closes.append(device.close)
        device.close = lambda: None  # type: ignore[method-assign]
        return device

    def release(self) -> None:
        for close in self.closes:
            close()


def test_the_lab_refuses_the_removal_while_a_device_stays_open(
    lab: LabInfo, conn: Connection, si: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    """The negative control: the order matters, and the lab would catch a wrong one."""
    access = HeldOpen(conn, plugin=str(vddk_standin()), libdir=str(tmp_path))
    protect(conn, vm_name, TARGET)
    control.write_random(vm_name, offset=MIB, length=100_000, seed=4)
    try:
        with pytest.raises(VSphereFault) as caught:
            replicate(conn, vm_name, replica_access=access, source_access=access)
        assert caught.value.fault == "FileLocked"
        assert sessions_of(control, find(si, vm_name))
    finally:
        access.release()


def test_a_storage_vmotion_between_cycles_keeps_the_replica_byte_exact(
    lab: LabInfo, conn: Connection, si: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    access = VDDKDisks(conn, plugin=str(vddk_standin()), libdir=str(tmp_path))
    protect(conn, vm_name, TARGET)
    control.write_random(vm_name, offset=3 * MIB, length=300_000, seed=5)
    replicate(conn, vm_name, replica_access=access, source_access=access)
    source = find(si, vm_name)
    uuids = [d.backing.uuid for d in labutil.disks(source)]
    before = [d.backing.fileName for d in labutil.disks(source)]
    secondary = next(ds for ds in source.runtime.host.datastore if ds.name == "secondary-ds")
    labutil.wait(source.RelocateVM_Task(spec=vim.vm.RelocateSpec(datastore=secondary)))
    moved = labutil.disks(source)
    assert [d.backing.uuid for d in moved] == uuids
    assert all(d.backing.fileName.startswith("[secondary-ds] ") for d in moved)
    for old in before:
        assert not labutil.local_extent(lab, old).exists(), f"{old} stayed on its old datastore"
    control.write_random(vm_name, offset=7 * MIB, length=400_000, seed=6, disk=0)
    control.write_random(vm_name, offset=9 * MIB, length=200_000, seed=7, disk=1)
    result = replicate(conn, vm_name, replica_access=access, source_access=access)
    replica = find(si, f"{vm_name}-replica")
    # The lab keeps change ids across the move (vSphere 6.0+) and every layer keeps its path on the
    # new datastore: the cycle knows the layer it read last time and reads only what changed.
    assert result.full_resync == () and result.resync_reasons == ()
    assert result.bytes_changed <= 2 * MIB, result.bytes_changed
    assert_replica_matches(lab, find(si, vm_name), replica, result.restore_point)
    assert state(replica)["restore_points"][-1]["id"] == result.restore_point
