"""A plain pyVmomi script against the lab: it never imports vsphere_replicator.

It starts a lab with `vsphere-replicator lab up`, verifies TLS with the lab's
CA, writes guest data with `lab write`, snapshots, loops
QueryChangedDiskAreas, reads the frozen data back over /folder with Range,
clones from the snapshot to the secondary datastore, finds the same bytes
there, and stops the lab. It exits non-zero if anything differs.

    python3 examples/pyvmomi_against_the_lab.py [STATE_DIR]
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import sys
import tempfile
from typing import Any

import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

MiB = 1 << 20


def lab(*args: str) -> str:
    return subprocess.run(
        ["vsphere-replicator", "lab", *args], check=True, capture_output=True, text=True
    ).stdout


def disk_of(obj: Any) -> Any:
    return next(d for d in obj.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def run(state_dir: str) -> None:
    info = json.loads(
        lab("up", "--vms", "2", "--disk-size", "64M", "--cbt-window", "8M", "--state-dir", state_dir)
    )
    try:
        context = ssl.create_default_context(cafile=info["ca_file"])  # verified, never switched off
        si = SmartConnect(
            host=info["host"], port=info["port"], user=info["user"], pwd=info["password"], sslContext=context
        )
        vm = si.content.searchIndex.FindByInventoryPath(f"{info['datacenter']}/vm/lab-vm-0001")
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
        task = vm.CreateSnapshot_Task(name="base", description="", memory=False, quiesce=False)
        WaitForTask(task)
        base = task.info.result
        since = disk_of(base).backing.changeId
        # As backup tools do: keep the change id, drop the snapshot. The next snapshot's frozen disk is
        # then the base disk, a flat extent /folder serves; above another snapshot it would be a redo
        # log (-delta.vmdk), which only VDDK reads (ESXi, and the lab by default).
        WaitForTask(base.RemoveSnapshot_Task(removeChildren=False))

        writes = {3 * MiB + 100: "1", 20 * MiB: "2", 63 * MiB: "3"}
        for offset, seed in writes.items():
            lab(
                "write",
                "lab-vm-0001",
                "--offset",
                str(offset),
                "--random",
                "4096",
                "--seed",
                seed,
                "--state-dir",
                state_dir,
            )
        task = vm.CreateSnapshot_Task(name="delta", description="", memory=False, quiesce=False)
        WaitForTask(task)
        snap = task.info.result
        disk = disk_of(snap)

        areas, offset = [], 0
        while offset < disk.capacityInBytes:
            answer = vm.QueryChangedDiskAreas(
                snapshot=snap, deviceKey=disk.key, startOffset=offset, changeId=since
            )
            areas += [(a.start, a.length) for a in answer.changedArea]
            offset = answer.startOffset + answer.length
        block = 64 * 1024
        expected = [(o // block * block, block) for o in sorted(writes)]  # each write fits one block
        assert areas == expected, (areas, expected)

        http = requests.Session()
        http.trust_env = False
        http.verify = info["ca_file"]
        http.headers["Cookie"] = si._stub.cookie
        ds, rel = disk.backing.fileName[1:].split("] ")
        url = f"https://{info['host']}:{info['port']}/folder/{rel.replace('.vmdk', '-flat.vmdk')}"
        params = {"dcPath": info["datacenter"], "dsName": ds}

        def ranged(url: str, params: dict[str, str], start: int, length: int) -> bytes:
            answer = http.get(url, params=params, headers={"Range": f"bytes={start}-{start + length - 1}"})
            answer.raise_for_status()  # never take an error page for disk bytes
            assert answer.status_code == 206 and len(answer.content) == length, answer.status_code
            return answer.content

        frozen = b"".join(ranged(url, params, s, n) for s, n in areas)

        dc = si.content.rootFolder.childEntity[0]
        secondary = next(d for d in dc.datastore if d.name == "secondary-ds")
        spec = vim.vm.CloneSpec(
            snapshot=snap, powerOn=False, location=vim.vm.RelocateSpec(datastore=secondary)
        )
        task = vm.CloneVM_Task(folder=dc.vmFolder, name="lab-vm-0001-copy", spec=spec)
        WaitForTask(task)
        clone_disk = disk_of(task.info.result)
        ds2, rel2 = clone_disk.backing.fileName[1:].split("] ")
        assert ds2 == "secondary-ds"
        url2 = f"https://{info['host']}:{info['port']}/folder/{rel2.replace('.vmdk', '-flat.vmdk')}"
        copied = b"".join(ranged(url2, {"dcPath": info["datacenter"], "dsName": ds2}, s, n) for s, n in areas)
        assert hashlib.sha256(copied).digest() == hashlib.sha256(frozen).digest()
        print(
            f"{len(areas)} changed areas, {len(frozen)} bytes read from the snapshot and found on the clone"
        )
        Disconnect(si)
    finally:
        lab("down", "--state-dir", state_dir)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="lab-example-"))
