"""Datastore kinds in the lab (VMFS, NFS, vSAN) and what each transport does with them.

A lab of its own: primary-ds is an NFS datastore (changeId="*" answers one
extent covering the whole disk), vsan-ds a vSAN one (no disk extent is a
file: /folder answers 404). VDDK serves both; the datastore HTTP endpoint and
mounts refuse vSAN disks and delta layers before any request, naming VDDK.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from tests.replication_util import assert_replica_matches, find, our_source_snapshots, state
from tests.test_replication_crash import cli_env, lab_mounts
from tests.test_vddk import vr
from vsphere_replicator.connection import Connection, connect
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import DiskInfo, datastore_type, resolve_vm, snapshot_disks
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, start_lab
from vsphere_replicator.lab.process import check_datastore_options
from vsphere_replicator.replication import HTTPDatastores, MountedDatastores
from vsphere_replicator.retry import RetryPolicy
from vsphere_replicator.snapshots import create_snapshot, remove_snapshot

pytestmark = pytest.mark.lab

MIB = 1 << 20
DISK_SIZE = 32 * MIB


@pytest.fixture(scope="module")
def kinds_lab() -> Iterator[LabInfo]:
    with running_lab(
        vms=4,
        disks_per_vm=2,
        disk_size=DISK_SIZE,
        cbt_window=4 * MIB,
        cbt_block=64 << 10,
        datastore_kinds={"primary-ds": "nfs", "vsan-ds": "vsan"},
    ) as info:
        yield info


@pytest.fixture(scope="module")
def kinds_si(kinds_lab: LabInfo) -> Iterator[Any]:
    si = labutil.connect(kinds_lab)
    yield si
    labutil.disconnect(si)


@pytest.fixture
def kinds_conn(kinds_lab: LabInfo) -> Iterator[Connection]:
    with connect(
        kinds_lab.host,
        kinds_lab.user,
        kinds_lab.password,
        port=kinds_lab.port,
        ca_file=kinds_lab.ca_file,
        retry=RetryPolicy(sleep=lambda _: None),
    ) as connection:
        yield connection


def clone_onto_vsan(si: Any, source: str, name: str) -> Any:
    """A powered-on copy of `source` with its disks on vsan-ds (vCenter copies the bytes)."""
    vm = find(si, source)
    datastore = None
    for ds in si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.Datastore], True).view:
        if ds.name == "vsan-ds":
            datastore = ds
    assert datastore is not None
    spec = vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(datastore=datastore, pool=vm.resourcePool), powerOn=True
    )
    labutil.wait(vm.CloneVM_Task(folder=vm.parent, name=name, spec=spec))
    clone = find(si, name)
    assert all(d.backing.fileName.startswith("[vsan-ds] ") for d in labutil.disks(clone))
    return clone


def test_the_lab_reports_each_datastore_kind(kinds_lab: LabInfo, kinds_conn: Connection) -> None:
    assert set(kinds_lab.datastores) == {"primary-ds", "secondary-ds", "vsan-ds"}
    kinds = {name: datastore_type(kinds_conn, name) for name in kinds_lab.datastores}
    assert kinds == {"primary-ds": "NFS", "secondary-ds": "VMFS", "vsan-ds": "vsan"}
    listed = LabControl(kinds_lab).datastores()
    assert listed["primary-ds"] == {"kind": "nfs", "type": "NFS", "star_answer": "whole"}
    assert listed["vsan-ds"]["kind"] == "vsan"


def test_a_resync_on_nfs_reads_the_allocation_map_not_the_whole_disk(
    kinds_lab: LabInfo, kinds_si: Any, tmp_path: Path
) -> None:
    control = LabControl(kinds_lab)
    name = "lab-vm-0001"
    vr(kinds_lab, tmp_path, "protect", name, "--datastore", "secondary-ds")
    for disk in (0, 1):
        control.write_random(name, offset=(5 + disk) * MIB, length=300_000, disk=disk)
    control.cbt_reset(name)  # every disk resyncs: a full read, changeId="*", answered with the whole disk
    done = vr(kinds_lab, tmp_path, "replicate", name)
    capacity = sum(d.capacityInBytes for d in labutil.disks(find(kinds_si, name)))
    moved = json.loads(done.stdout)["bytes_moved"]
    # The stand-in's block status: the written areas (block-rounded), not 2 x 32 MiB.
    assert 600_000 <= moved < capacity // 4
    replica = find(kinds_si, f"{name}-replica")
    points = [p["id"] for p in state(replica)["restore_points"]]
    assert_replica_matches(kinds_lab, find(kinds_si, name), replica, points[-1])


def test_http_and_mounts_refuse_a_vsan_disk_before_any_request(
    kinds_lab: LabInfo, kinds_si: Any, kinds_conn: Connection
) -> None:
    clone = clone_onto_vsan(kinds_si, "lab-vm-0002", "on-vsan-library")
    info = resolve_vm(kinds_conn, clone.name)
    control = LabControl(kinds_lab)
    control.reset_stats()
    http = HTTPDatastores(kinds_conn, kinds_lab.datacenter)
    mounts = MountedDatastores(kinds_lab.datastores, conn=kinds_conn)
    for disk in info.disks:
        for access in (http, mounts):
            with pytest.raises(InvalidInput, match=r"vsan.*--transport vddk"):
                access.check(disk)
        with pytest.raises(InvalidInput, match=r"no flat file.*--transport vddk"):
            http.source(disk, vm=info.moref)
    assert control.stats()["folder_requests"] == 0
    # What /folder itself answers for the extent: 404, as vCenter does on vSAN.
    session = labutil.folder_session(kinds_lab, kinds_si)
    url, params = labutil.folder_url(kinds_lab, labutil.disks(clone)[0].backing.fileName)
    assert session.get(url, params=params, timeout=30).status_code == 404


def test_a_delta_layer_is_refused_by_http_and_mounts(
    kinds_lab: LabInfo, kinds_si: Any, kinds_conn: Connection
) -> None:
    info = resolve_vm(kinds_conn, "lab-vm-0003")
    snap = create_snapshot(kinds_conn, info, "someone-elses").snapshot
    try:
        # ESXi marks a snapshot's delta layer with deltaDiskFormat; the lab's layers are flat files.
        frozen = [
            dataclasses.replace(d, delta_format="redoLogFormat")
            for d in snapshot_disks(kinds_conn, snap.moref)
        ]
        http = HTTPDatastores(kinds_conn, kinds_lab.datacenter)
        mounts = MountedDatastores({"secondary-ds": kinds_lab.datastores["secondary-ds"]})
        for disk in frozen:
            with pytest.raises(InvalidInput, match=r"delta layer \(redoLogFormat\).*--transport vddk"):
                http.source(disk, vm=info.moref, snapshot=snap.moref)
            with pytest.raises(InvalidInput, match=r"delta layer \(redoLogFormat\).*--transport vddk"):
                mounts.check(disk)
    finally:
        remove_snapshot(kinds_conn, resolve_vm(kinds_conn, "lab-vm-0003"), snap)


def test_a_mount_names_a_layer_whose_descriptor_is_no_flat_disk(kinds_lab: LabInfo, tmp_path: Path) -> None:
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "vm-000001.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\ncreateType="vmfsSparse"\n'
    )
    disk = dataclasses.replace(
        _a_disk(), file_name="[primary-ds] vm/vm-000001.vmdk", datastore="primary-ds", delta_format=None
    )
    with pytest.raises(InvalidInput, match=r"createType is vmfsSparse.*--transport vddk"):
        MountedDatastores({"primary-ds": tmp_path}).check(disk)
    (tmp_path / "vm" / "vm-000001.vmdk").unlink()
    with pytest.raises(InvalidInput, match="mounted there"):
        MountedDatastores({"primary-ds": tmp_path}).check(disk)


def _a_disk() -> DiskInfo:
    return DiskInfo(
        key=2000,
        label="Hard disk 1",
        controller_key=1000,
        unit_number=0,
        capacity=MIB,
        file_name="[primary-ds] vm/vm.vmdk",
        datastore="primary-ds",
        thin=True,
        eager_scrub=None,
        change_id=None,
        uuid=None,
        parent_file=None,
    )


def test_a_vsan_vm_replicates_through_vddk_and_is_refused_otherwise(
    kinds_lab: LabInfo, kinds_si: Any, tmp_path: Path
) -> None:
    clone = clone_onto_vsan(kinds_si, "lab-vm-0004", "on-vsan-cli")
    vr(kinds_lab, tmp_path, "protect", clone.name, "--datastore", "secondary-ds")
    LabControl(kinds_lab).write_random(clone.name, offset=2 * MIB, length=200_000, disk=1)
    # Through mounts: refused before the cycle's snapshot, nothing left behind.
    command = [sys.executable, "-m", "vsphere_replicator.cli", "replicate", clone.name, "--json"]
    env = cli_env(kinds_lab)
    env.update(VSPHERE_REPLICATOR_TRANSPORT="mount", VSPHERE_REPLICATOR_MOUNTS=lab_mounts(kinds_lab))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "--transport vddk" in done.stderr and "vsan" in done.stderr
    assert our_source_snapshots(find(kinds_si, clone.name)) == []
    # VDDK (the stand-in reads the lab's files) serves a vSAN datastore's disks.
    vr(kinds_lab, tmp_path, "replicate", clone.name)
    source = find(kinds_si, clone.name)
    assert our_source_snapshots(source) == []
    replica = find(kinds_si, f"{clone.name}-replica")
    points = [p["id"] for p in state(replica)["restore_points"]]
    assert_replica_matches(kinds_lab, source, replica, points[-1])


def test_lab_fault_star_answer_changes_a_datastores_answer(kinds_lab: LabInfo) -> None:
    def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "vsphere_replicator.cli", "lab", "fault", *args]
        return subprocess.run(
            [*command, "--state-dir", kinds_lab.state_dir], capture_output=True, text=True, timeout=60
        )

    control = LabControl(kinds_lab)
    try:
        done = lab_cli("star-answer", "vsan-ds", "fault")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["star_answer"] == "fault"
        assert control.datastores()["vsan-ds"]["star_answer"] == "fault"
        assert lab_cli("star-answer", "nowhere-ds", "whole").returncode != 0
    finally:
        assert lab_cli("star-answer", "vsan-ds", "default").returncode == 0
    assert control.datastores()["vsan-ds"]["star_answer"] == "whole"


@pytest.mark.parametrize(
    ("kinds", "answers"),
    [
        ({"a b": "nfs"}, None),
        ({"x": "vvol"}, None),
        ({"x": "nfs"}, {"nowhere": "whole"}),
        (None, {"primary-ds": "sometimes"}),
        (["primary-ds"], None),
    ],
)
def test_start_lab_refuses_bad_datastore_options_before_starting(kinds: Any, answers: Any) -> None:
    with pytest.raises(InvalidInput):
        check_datastore_options(kinds, answers)
    with pytest.raises(InvalidInput):
        start_lab("/nonexistent/never-started", datastore_kinds=kinds, star_answers=answers)
