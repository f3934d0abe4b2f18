"""The main job on the embedded lab: snapshot, read changed blocks, clone.

Sessions, inventory and snapshots go through the library; the changed-area
query, the range reads and the clone use pyVmomi and HTTP directly until the
CBT and clone layers exist. Every byte moved is checked.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from pyVmomi import vim

from vsphere_replicator.connection import Connection, connect
from vsphere_replicator.inventory import VMSelector, get_vm, vm_object
from vsphere_replicator.lab import LabControl, LabInfo, running_lab
from vsphere_replicator.snapshots import create_snapshot, remove_all_snapshots
from vsphere_replicator.tasks import run_task

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What the demo did, in numbers a reader can check."""

    vm: str
    change_id: str
    query_calls: int
    changed_areas: tuple[tuple[int, int], ...]
    bytes_written: int
    bytes_read: int
    delta_verified: bool
    clone: str
    clone_datastore: str
    clone_matches_snapshot: bool


def _disk(obj: Any) -> Any:
    return next(d for d in obj.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def _changed_areas(
    vm: Any, snap: Any, key: int, change_id: str, capacity: int
) -> tuple[list[tuple[int, int]], int]:
    # One answer covers only part of the disk: loop until the capacity is covered.
    offset, areas, calls = 0, [], 0
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=offset, changeId=change_id)
        calls += 1
        areas += [(a.start, a.length) for a in info.changedArea]
        offset = info.startOffset + info.length
    return areas, calls


def _flat_url(lab: LabInfo, file_name: str) -> tuple[str, dict[str, str]]:
    ds, _, rel = file_name.partition("] ")
    return (
        f"https://{lab.host}:{lab.port}/folder/{rel.replace('.vmdk', '-flat.vmdk')}",
        {"dcPath": lab.datacenter, "dsName": ds.lstrip("[")},
    )


def run_demo(say: Callable[[str], None] = print) -> DemoReport:
    """Start a lab, replicate one VM's changes and clone it; stop the lab."""
    with (
        running_lab(vms=2, disk_size=64 * MiB) as lab,
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn,
    ):
        return _demo(lab, LabControl(lab), conn, say)


def _demo(lab: LabInfo, control: LabControl, conn: Connection, say: Callable[[str], None]) -> DemoReport:
    say(f"lab up at {lab.url} (TLS verified with {lab.ca_file})")
    info = get_vm(conn, "lab-vm-0001")
    vm = vm_object(conn, info.moref)
    stub = conn.service_instance._stub
    run_task(
        conn, lambda: vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)), what="enable CBT"
    )
    base = create_snapshot(conn, info, "demo-base", description="vsphere_replicator demo")
    change_id = _disk(vim.vm.Snapshot(base.snapshot.moref, stub)).backing.changeId
    say(f"{info.name}: CBT on, base snapshot {base.snapshot.name} taken, change id {change_id}")

    rng = random.Random(2026)
    written: dict[int, bytes] = {}
    for offset in (0, 5 * MiB + 4096, 40 * MiB):
        written[offset] = control.write_random(
            info.name, offset=offset, length=256 * 1024, seed=rng.randrange(1 << 30)
        )
    say(f"guest wrote {len(written)} extents, {sum(map(len, written.values()))} bytes")

    delta_info = create_snapshot(conn, info, "demo-delta", description="vsphere_replicator demo").snapshot
    delta = vim.vm.Snapshot(delta_info.moref, stub)
    disk = _disk(delta)
    areas, calls = _changed_areas(vm, delta, disk.key, change_id, disk.capacityInBytes)
    say(f"QueryChangedDiskAreas: {len(areas)} changed areas in {calls} paged calls")

    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the lab's CA
    session.verify = lab.ca_file
    session.headers["Cookie"] = stub.cookie
    url, params = _flat_url(lab, disk.backing.fileName)
    image: dict[int, bytes] = {}
    for start, length in areas:
        r = session.get(
            url, params=params, headers={"Range": f"bytes={start}-{start + length - 1}"}, timeout=60
        )
        r.raise_for_status()
        image[start] = r.content
    bytes_read = sum(map(len, image.values()))
    verified = all(
        any(
            s <= off and off + len(data) <= s + len(chunk) and chunk[off - s : off - s + len(data)] == data
            for s, chunk in image.items()
        )
        for off, data in written.items()
    )
    say(f"read {bytes_read} bytes of the frozen snapshot disk; written data found intact: {verified}")

    dc = conn.content.rootFolder.childEntity[0]
    secondary = next(ds for ds in dc.datastore if ds.name == "secondary-ds")
    spec = vim.vm.CloneSpec(snapshot=delta, powerOn=False, location=vim.vm.RelocateSpec(datastore=secondary))
    clone_ref = run_task(
        conn,
        lambda: vm.CloneVM_Task(folder=dc.vmFolder, name=f"{info.name}-replica", spec=spec),
        what="clone",
    )
    clone = get_vm(conn, VMSelector(moref=clone_ref._moId))
    clone_url, clone_params = _flat_url(lab, clone.disks[0].file_name)
    digests = [
        hashlib.sha256(session.get(u, params=p, timeout=60).content).hexdigest()
        for u, p in ((url, params), (clone_url, clone_params))
    ]
    matches = digests[0] == digests[1]
    say(
        f"cloned to {clone.name} on {clone.disks[0].datastore}, {clone.power_state}; "
        f"bytes equal to the snapshot: {matches}"
    )
    remove_all_snapshots(conn, info)
    say(f"{info.name}: demo snapshots removed")
    return DemoReport(
        vm=info.name,
        change_id=change_id,
        query_calls=calls,
        changed_areas=tuple(areas),
        bytes_written=sum(map(len, written.values())),
        bytes_read=bytes_read,
        delta_verified=verified,
        clone=clone.name,
        clone_datastore=clone.disks[0].datastore,
        clone_matches_snapshot=matches,
    )
