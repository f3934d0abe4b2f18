"""The main job on the embedded lab: snapshot, read changed blocks, clone.

It talks to the lab with plain pyVmomi and HTTP range reads, the way the
library's later layers will, and checks every byte it moves.
"""

from __future__ import annotations

import hashlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from vsphere_replicator.lab import LabControl, LabInfo, running_lab

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


def _wait(task: Any) -> Any:
    WaitForTask(task)
    return task.info.result


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
    with running_lab(vms=2, disk_size=64 * MiB) as lab:
        control = LabControl(lab)
        context = ssl.create_default_context(cafile=lab.ca_file)
        si = SmartConnect(host=lab.host, port=lab.port, user=lab.user, pwd=lab.password, sslContext=context)
        try:
            return _demo(lab, control, si, say)
        finally:
            Disconnect(si)


def _demo(lab: LabInfo, control: LabControl, si: Any, say: Callable[[str], None]) -> DemoReport:
    say(f"lab up at {lab.url} (TLS verified with {lab.ca_file})")
    vm = si.content.searchIndex.FindByInventoryPath(f"{lab.datacenter}/vm/lab-vm-0001")
    _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    base = _wait(
        vm.CreateSnapshot_Task(
            name="vr-demo-base", description="vsphere_replicator demo", memory=False, quiesce=False
        )
    )
    change_id = _disk(base).backing.changeId
    say(f"{vm.name}: CBT on, base snapshot taken, change id {change_id}")

    rng = random.Random(2026)
    written: dict[int, bytes] = {}
    for offset in (0, 5 * MiB + 4096, 40 * MiB):
        written[offset] = control.write_random(
            vm.name, offset=offset, length=256 * 1024, seed=rng.randrange(1 << 30)
        )
    say(f"guest wrote {len(written)} extents, {sum(map(len, written.values()))} bytes")

    delta = _wait(
        vm.CreateSnapshot_Task(
            name="vr-demo-delta", description="vsphere_replicator demo", memory=False, quiesce=False
        )
    )
    disk = _disk(delta)
    areas, calls = _changed_areas(vm, delta, disk.key, change_id, disk.capacityInBytes)
    say(f"QueryChangedDiskAreas: {len(areas)} changed areas in {calls} paged calls")

    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the lab's CA
    session.verify = lab.ca_file
    session.headers["Cookie"] = si._stub.cookie
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

    dc = si.content.rootFolder.childEntity[0]
    secondary = next(ds for ds in dc.datastore if ds.name == "secondary-ds")
    spec = vim.vm.CloneSpec(snapshot=delta, powerOn=False, location=vim.vm.RelocateSpec(datastore=secondary))
    clone = _wait(vm.CloneVM_Task(folder=dc.vmFolder, name=f"{vm.name}-replica", spec=spec))
    clone_url, clone_params = _flat_url(lab, _disk(clone).backing.fileName)
    digests = [
        hashlib.sha256(session.get(u, params=p, timeout=60).content).hexdigest()
        for u, p in ((url, params), (clone_url, clone_params))
    ]
    matches = digests[0] == digests[1]
    say(
        f"cloned to {clone.name} on secondary-ds, {clone.runtime.powerState}; "
        f"bytes equal to the snapshot: {matches}"
    )
    _wait(vm.RemoveAllSnapshots_Task())
    say(f"{vm.name}: demo snapshots removed")
    return DemoReport(
        vm=vm.name,
        change_id=change_id,
        query_calls=calls,
        changed_areas=tuple(areas),
        bytes_written=sum(map(len, written.values())),
        bytes_read=bytes_read,
        delta_verified=verified,
        clone=clone.name,
        clone_datastore="secondary-ds",
        clone_matches_snapshot=matches,
    )
