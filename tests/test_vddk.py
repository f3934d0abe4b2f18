"""End to end through the CLI with `--transport vddk`: the lab's VDDK stand-in, no datastore mounted.

A VM with two disks is protected and replicated twice; each restore point
holds the source's bytes, no nbdkit outlives the commands, and the password
is in no nbdkit's command line or environment and in no output.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from tests import labutil
from tests.replication_util import (
    all_vms,
    assert_point_matches_chains,
    assert_replica_matches,
    chain_hashes,
    find,
    our_source_snapshots,
    point_chain_hashes,
    snapshots,
    state,
)
from tests.test_replication_crash import cli_env
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import TransportError
from vsphere_replicator.inventory import snapshot_disks
from vsphere_replicator.lab import LabInfo, vddk_standin
from vsphere_replicator.replication import VDDKDisks
from vsphere_replicator.transport.vddk import VDDKBlockDevice, VDDKServer


def nbdkit_processes(port: int) -> dict[int, tuple[bytes, bytes]]:
    """{pid: (cmdline, environ)} of every running nbdkit serving the lab on `port`.

    Only this lab's: other xdist workers run their own labs (other ports) and
    may start and stop nbdkits of their own at any time.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if cmdline.split(b"\0", 1)[0].endswith(b"nbdkit") and f"port={port}".encode() in cmdline.split(b"\0"):
            found[int(entry.name)] = (cmdline, environ)
    return found


class Sampler(threading.Thread):
    """Records every nbdkit process seen while the commands run (a bounded loop)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.seen: dict[int, tuple[bytes, bytes]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        for _ in range(20_000):  # at most ~200 s of 10 ms samples
            if self.done.wait(0.01):
                return
            self.seen.update(nbdkit_processes(self.port))


def vr(lab: LabInfo, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(lab)  # nothing mounted: every byte goes through VDDK
    vddk = ["--transport", "vddk", "--vddk-plugin", str(vddk_standin()), "--vddk-libdir", str(tmp_path)]
    command = [sys.executable, "-m", "vsphere_replicator.cli", *args, *vddk, "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert lab.password not in done.stdout + done.stderr
    return done


def test_protect_and_two_cycles_through_vddk(
    lab: LabInfo, si: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    assert len(labutil.disks(find(si, vm_name))) == 2
    sampler = Sampler(lab.port)
    sampler.start()
    try:
        vr(lab, tmp_path, "protect", vm_name, "--datastore", "secondary-ds", "--verify")
        for cycle in range(2):
            for disk in (0, 1):
                control.write_random(vm_name, offset=(cycle * 3 + disk) << 20, length=700_000, disk=disk)
            vr(lab, tmp_path, "replicate", vm_name)
            replica = find(si, f"{vm_name}-replica")
            points = [p["id"] for p in state(replica)["restore_points"]]
            assert len(points) == cycle + 2  # the seed's, then one per cycle
            assert_replica_matches(lab, find(si, vm_name), replica, points[-1])
    finally:
        sampler.done.set()
        sampler.join(timeout=30)
    standin = str(vddk_standin()).encode()
    ours = {pid: seen for pid, seen in sampler.seen.items() if standin in seen[0]}
    assert ours, "no nbdkit vddk process was seen: the cycles did not go through VDDK"
    secret = lab.password.encode()
    for cmdline, environ in ours.values():
        assert secret not in cmdline
        assert secret not in environ
        assert b"--exit-with-parent" in cmdline and b"maxdata=2M" in cmdline
    assert not (set(ours) & set(nbdkit_processes(lab.port))), "an nbdkit vddk outlived the commands"


def hard_edges_through_vddk(lab: LabInfo, si: Any, control: Any, vm_name: str, tmp_path: Path) -> None:
    """Someone else's snapshot, a revert, a CBT reset, a test failover, a planned failover, a failback.

    Every step is one CLI command with `--transport vddk` and nothing mounted;
    every restore point and the failed-back VM are compared with the source
    through their backing chains by qemu-img, not through the library. Run by
    tests/test_lab_redo_logs.py against a lab whose snapshots are redo logs, as
    ESXi's are (the stricter lab: the same scenario on flat layers adds nothing).
    """
    sampler = Sampler(lab.port)
    sampler.start()
    replica_name = f"{vm_name}-replica"

    def cycle(seed: int) -> dict[str, Any]:
        for disk in (0, 1):
            control.write_random(
                vm_name, offset=(seed * 2 + disk) << 20, length=300_000, seed=seed, disk=disk
            )
        result: dict[str, Any] = json.loads(vr(lab, tmp_path, "replicate", vm_name).stdout)
        assert_point_matches_chains(lab, find(si, vm_name), find(si, replica_name), result["restore_point"])
        return result

    try:
        vr(lab, tmp_path, "protect", vm_name, "--datastore", "secondary-ds")
        source = find(si, vm_name)
        theirs = labutil.snapshot(source, "backup-tool")  # another product's snapshot stays put
        first = cycle(1)
        assert first["full_resync"] == []
        assert [n.name for n in snapshots(find(si, vm_name))] == ["backup-tool"]

        labutil.wait(theirs.RevertToSnapshot_Task())  # CBT would leave a hole: the cycle resyncs
        reverted = cycle(2)
        assert sorted(reverted["full_resync"]) == [2000, 2001]
        assert all(why.startswith("source_reverted") for _, why in reverted["resync_reasons"])

        control.cbt_reset(vm_name, disk=1)  # the change id of disk 1 is no longer valid
        reset = cycle(3)
        assert reset["full_resync"] == [2001]

        test = json.loads(vr(lab, tmp_path, "failover", vm_name, "--test").stdout)
        copy = find(si, test["running"])
        assert copy.runtime.powerState == "poweredOn"
        assert chain_hashes(lab, copy) == point_chain_hashes(
            lab, find(si, replica_name), reset["restore_point"]
        )
        vr(lab, tmp_path, "failover", vm_name, "--cleanup")
        assert all(vm.name != test["running"] for vm in all_vms(si))

        control.write_random(vm_name, offset=11 << 20, length=200_000, seed=4, disk=0)
        planned = json.loads(vr(lab, tmp_path, "failover", vm_name, "--planned").stdout)
        source, promoted = find(si, vm_name), find(si, planned["running"])
        assert source.runtime.powerState == "poweredOff" and promoted.runtime.powerState == "poweredOn"
        assert chain_hashes(lab, promoted) == chain_hashes(lab, source)

        control.write_random(promoted.name, offset=13 << 20, length=200_000, seed=5, disk=1)
        expected = chain_hashes(lab, find(si, promoted.name))
        vr(lab, tmp_path, "failback", vm_name)
        original = find(si, vm_name)
        assert original.runtime.powerState == "poweredOn"
        assert chain_hashes(lab, original) == expected == chain_hashes(lab, find(si, replica_name))
        assert our_source_snapshots(original) == [] and our_source_snapshots(find(si, replica_name)) == []
        cycle(6)  # protection runs in its first direction again
    finally:
        sampler.done.set()
        sampler.join(timeout=30)
    standin = str(vddk_standin()).encode()
    ours = {pid: seen for pid, seen in sampler.seen.items() if standin in seen[0]}
    assert ours, "no nbdkit vddk process was seen"
    for cmdline, environ in ours.values():
        assert lab.password.encode() not in cmdline and lab.password.encode() not in environ
    assert not (set(ours) & set(nbdkit_processes(lab.port))), "an nbdkit vddk outlived the commands"


def test_nbdkits_refusal_becomes_a_transport_error_without_the_password(
    lab: LabInfo, si: Any, vm_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This test's private directories only: other tests' nbdkits start beside it in /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    vm = find(si, vm_name)
    server = VDDKServer(
        host=lab.host,
        port=lab.port,
        user=lab.user,
        password=lab.password,
        thumbprint=":".join(["0F"] * 20),  # not the lab's certificate
        plugin=str(vddk_standin()),
    )
    before = set(nbdkit_processes(lab.port))
    with pytest.raises(TransportError) as caught:
        VDDKBlockDevice(server, vm=vm._moId, file=labutil.disks(vm)[0].backing.fileName, read_only=True)
    message = str(caught.value)
    assert "exited with status 1" in message
    assert "not thumbprint=0F:0F" in message
    assert lab.password not in message
    assert not set(nbdkit_processes(lab.port)) - before
    assert not list(tmp_path.glob("vr-vddk-*"))  # the password file and its directory are gone


def test_a_source_device_reads_the_snapshot_and_stops_nbdkit_on_close(
    lab: LabInfo, conn: Connection, si: Any, vm_name: str
) -> None:
    vm = find(si, vm_name)
    snap = labutil.snapshot(vm, "vddk-device")
    disk = snapshot_disks(conn, snap._moId)[1]
    access = VDDKDisks(conn, plugin=str(vddk_standin()))
    before = set(nbdkit_processes(lab.port))
    device = access.source(disk, vm=vm._moId, snapshot=snap._moId)
    started = set(nbdkit_processes(lab.port)) - before
    try:
        assert len(started) == 1
        assert device.size == disk.capacity
        data = b"".join(device.read(o, 4 << 20) for o in range(0, device.size, 4 << 20))
    finally:
        device.close()
    assert hashlib.sha256(data).hexdigest() == labutil.sha256(labutil.local_extent(lab, disk.file_name))
    assert not started & set(nbdkit_processes(lab.port))
