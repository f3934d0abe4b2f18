"""The lab's VDDK stand-in: nbdkit-vddk's parameters, and VDDK's contract enforced against the lab.

Each contract violation has its own test: nbdkit exits non-zero with the
message on stderr (configuration), or the client's open fails and nbdkit
says why on stderr (open-time rules: read-only snapshots, writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from tests.conftest import _listening
from vsphere_replicator.errors import TransportError
from vsphere_replicator.lab import LabInfo, vddk_standin
from vsphere_replicator.lab.control import LabControl
from vsphere_replicator.transport.nbd import NBDBlockDevice, NBDConnection, NBDEndpoint

MIB = 1 << 20


def thumbprint(lab: LabInfo) -> str:
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((lab.host, lab.port)))
    digest = hashlib.sha1(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def password_file(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "password"
    path.write_text(text)
    path.chmod(mode)
    return path


@dataclass
class Args:
    """nbdkit-vddk's parameters for one disk, as a test changes them."""

    params: dict[str, str]
    read_only: bool = True
    blocksize: bool = True

    def argv(self, sock: Path) -> list[str]:
        return [
            "nbdkit",
            "-f",
            "--exit-with-parent",
            "-U",
            str(sock),
            *(["-r"] if self.read_only else []),
            *(["--filter=blocksize"] if self.blocksize else []),
            "python",
            str(vddk_standin()),
            *(["maxdata=2M"] if self.blocksize else []),  # a filter's parameters follow the plugin
            *(f"{k}={v}" for k, v in self.params.items()),
        ]


def disk_args(lab: LabInfo, tmp_path: Path, vm: Any, file: str, snapshot: Any = None) -> Args:
    params = {
        "server": lab.host,
        "port": str(lab.port),
        "user": lab.user,
        "password": f"+{password_file(tmp_path, lab.password)}",
        "thumbprint": thumbprint(lab),
        "vm": f"moref={vm._moId}",
        "file": file,
        "libdir": str(tmp_path),
        "transports": "nbdssl:nbd",
    }
    if snapshot is not None:
        params["snapshot"] = snapshot._moId
    return Args(params)


def refused(args: Args, tmp_path: Path) -> tuple[int, str]:
    """Run nbdkit as configured; it must exit by itself: (status, stderr)."""
    done = subprocess.run(
        args.argv(tmp_path / "refused.sock"), capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, done.stderr


@contextlib.contextmanager
def served(args: Args, tmp_path: Path) -> Iterator[tuple[NBDEndpoint, subprocess.Popen[str]]]:
    sock = tmp_path / "vddk.sock"
    process = subprocess.Popen(args.argv(sock), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _listening(sock):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nbdkit did not start: {process.communicate(timeout=10)[1]}")
            time.sleep(0.05)
        yield NBDEndpoint(socket_path=str(sock)), process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


def stderr_of(process: subprocess.Popen[str]) -> str:
    process.terminate()
    return process.communicate(timeout=10)[1]


def first_disk(obj: Any) -> str:
    name: str = labutil.disks(obj)[0].backing.fileName
    return name


def power_off(vm: Any) -> None:
    if vm.runtime.powerState != "poweredOff":
        labutil.wait(vm.PowerOffVM_Task())


def assert_refused(args: Args, tmp_path: Path, *needles: str) -> None:
    status, stderr = refused(args, tmp_path)
    assert status != 0, stderr
    for needle in needles:
        assert needle in stderr, stderr


# -- serving ---------------------------------------------------------------------------------


def test_a_snapshot_disk_reads_byte_exact(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    snap = labutil.snapshot(vm, "vddk-read")
    file = first_disk(snap)
    expected = labutil.sha256(labutil.local_extent(lab, file))
    with served(disk_args(lab, tmp_path, vm, file, snap), tmp_path) as (endpoint, _):
        device = NBDBlockDevice(endpoint, connections=2)
        try:
            assert device.read_only
            digest = hashlib.sha256()
            for offset in range(0, device.size, 8 * MIB):  # 8 MiB requests: the filter splits them
                digest.update(device.read(offset, min(8 * MIB, device.size - offset)))
        finally:
            device.close()
    assert digest.hexdigest() == expected


def open_on(control: LabControl, file: str) -> list[dict[str, Any]]:
    return [s for s in control.disk_sessions() if s["file"] == file]


def test_a_disk_open_through_vddk_is_locked_until_closed(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    """While the stand-in serves a snapshot's disk, ESXi's answer to removing that snapshot is FileLocked."""
    control = LabControl(lab)
    snap = labutil.snapshot(vm, "vddk-locked")
    file = first_disk(snap)
    with served(disk_args(lab, tmp_path, vm, file, snap), tmp_path) as (endpoint, _):
        device = NBDBlockDevice(endpoint, connections=2)
        try:
            device.read(0, 4096)
            assert open_on(control, file), "the open disk is not registered with the lab"
            with pytest.raises(vim.fault.FileLocked) as locked:
                labutil.wait(snap.RemoveSnapshot_Task(removeChildren=False))
            assert locked.value.file == file
        finally:
            device.close()
        deadline = time.monotonic() + 30  # nbdkit runs `close` once the client has gone
        while open_on(control, file) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert open_on(control, file) == []
    labutil.wait(snap.RemoveSnapshot_Task(removeChildren=False))


def test_a_powered_off_vms_current_layer_takes_writes(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    power_off(vm)
    file = first_disk(vm)
    args = disk_args(lab, tmp_path, vm, file)
    args.read_only = False
    data = os.urandom(3 * MIB)
    with served(args, tmp_path) as (endpoint, _):
        device = NBDBlockDevice(endpoint, connections=1)
        try:
            device.write(MIB, data)
            device.flush()
        finally:
            device.close()
    with labutil.local_extent(lab, file).open("rb") as handle:
        handle.seek(MIB)
        assert handle.read(len(data)) == data


def test_requests_over_2_mib_fail_with_einval_unless_split(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    snap = labutil.snapshot(vm, "vddk-big")
    args = disk_args(lab, tmp_path, vm, first_disk(snap), snap)
    args.blocksize = False
    with served(args, tmp_path) as (endpoint, process):
        conn = NBDConnection(endpoint)
        try:
            assert len(conn.read(0, 2 * MIB)) == 2 * MIB
            with pytest.raises(TransportError, match="errno 22"):
                conn.read(0, 2 * MIB + 512)
        finally:
            conn.close()
        assert "exceeds VDDK's 2097152" in stderr_of(process)


# -- refused at configuration: nbdkit exits with the message ----------------------------------


@pytest.mark.parametrize("missing", ["server", "user", "password", "thumbprint", "vm", "file"])
def test_a_required_parameter_is_missing(lab: LabInfo, vm: Any, tmp_path: Path, missing: str) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    del args.params[missing]
    assert_refused(args, tmp_path, f"missing required parameter(s): {missing}=")


def test_an_unknown_parameter(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["readonly"] = "true"
    assert_refused(args, tmp_path, "unknown parameter 'readonly'")


def test_a_wrong_thumbprint(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["thumbprint"] = ":".join(["AB"] * 20)
    assert_refused(args, tmp_path, "not thumbprint=AB:AB", thumbprint(lab))


def test_a_thumbprint_that_is_not_sha1(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["thumbprint"] = hashlib.sha256(b"x").hexdigest()
    assert_refused(args, tmp_path, "is not a SHA-1 thumbprint")


def test_a_literal_password(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["password"] = "not-the-real-one"
    status, stderr = refused(args, tmp_path)
    assert status != 0
    assert "must be password=+FILE" in stderr
    assert "not-the-real-one" not in stderr


def test_a_password_file_others_can_read(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    (tmp_path / "password").chmod(0o644)
    assert_refused(args, tmp_path, "is readable by others (mode 0644)")


def test_a_missing_password_file(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["password"] = f"+{tmp_path / 'nowhere'}"
    assert_refused(args, tmp_path, "No such file or directory")


def test_a_wrong_password(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    password_file(tmp_path, "wrong")
    assert_refused(args, tmp_path, f"cannot log in as user={lab.user}")


def test_a_vm_that_does_not_exist(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["vm"] = "moref=vm-999999"
    assert_refused(args, tmp_path, "vm=moref=vm-999999: no such virtual machine")


def test_vm_without_moref(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["vm"] = vm.name
    assert_refused(args, tmp_path, "vm= must be vm=moref=ID")


def test_a_snapshot_that_does_not_exist(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["snapshot"] = "snapshot-999999"
    assert_refused(args, tmp_path, "snapshot=snapshot-999999: no such snapshot")


def test_a_snapshot_of_another_vm(lab: LabInfo, si: Any, vm: Any, fresh_vm: Any, tmp_path: Path) -> None:
    other = labutil.find_vm(si, fresh_vm())
    snap = labutil.snapshot(other, "theirs")
    args = disk_args(lab, tmp_path, vm, first_disk(other), snap)
    assert_refused(args, tmp_path, f"is not a snapshot of {vm._moId}")


def test_a_file_that_is_not_the_vms_disk(
    lab: LabInfo, si: Any, vm: Any, fresh_vm: Any, tmp_path: Path
) -> None:
    other = labutil.find_vm(si, fresh_vm())
    args = disk_args(lab, tmp_path, vm, first_disk(other))
    assert_refused(args, tmp_path, f"is not a disk of VM {vm._moId}")


def test_a_file_that_is_not_the_snapshots_disk(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    snap = labutil.snapshot(vm, "frozen")
    current = first_disk(vm)  # the layer above the snapshot's
    assert current != first_disk(snap)
    assert_refused(
        disk_args(lab, tmp_path, vm, current, snap), tmp_path, f"is not a disk of snapshot {snap._moId}"
    )


def test_a_file_that_is_no_datastore_path(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, "/vmfs/volumes/ds/disk.vmdk")
    assert_refused(args, tmp_path, "is not a datastore path")


def test_transports_that_cannot_reach_the_lab(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["transports"] = "hotadd:san"
    assert_refused(args, tmp_path, "none of transports=hotadd:san can reach the lab")


def test_a_libdir_that_does_not_exist(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.params["libdir"] = str(tmp_path / "vmware-vix-disklib-distrib")
    assert_refused(args, tmp_path, "no such directory")


# -- refused at open: the client's handshake fails, nbdkit says why ---------------------------


def _open_fails(args: Args, tmp_path: Path, needle: str) -> None:
    with served(args, tmp_path) as (endpoint, process):
        with pytest.raises(TransportError):
            NBDConnection(endpoint)
        assert needle in stderr_of(process)


def test_a_snapshot_opened_read_write(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    snap = labutil.snapshot(vm, "vddk-rw")
    args = disk_args(lab, tmp_path, vm, first_disk(snap), snap)
    args.read_only = False
    _open_fails(args, tmp_path, "a snapshot's disk opens read-only only")


def test_a_write_to_a_running_vm(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    assert vm.runtime.powerState == "poweredOn"
    args = disk_args(lab, tmp_path, vm, first_disk(vm))
    args.read_only = False
    _open_fails(args, tmp_path, "is poweredOn: VDDK writes only to a powered-off VM")


def test_a_write_below_the_current_layer(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    older = first_disk(vm)
    labutil.snapshot(vm, "above")
    power_off(vm)
    args = disk_args(lab, tmp_path, vm, older)
    args.read_only = False
    status, stderr = refused(args, tmp_path)  # not the VM's disk any more: refused at start already
    assert status != 0
    assert f"file={older} is not a disk of VM {vm._moId}" in stderr


def test_nbdkit_exits_with_the_process_that_started_it(lab: LabInfo, vm: Any, tmp_path: Path) -> None:
    snap = labutil.snapshot(vm, "vddk-parent")
    args = disk_args(lab, tmp_path, vm, first_disk(snap), snap)
    script = "import subprocess, sys; subprocess.Popen(sys.argv[1:]); print('started', flush=True)"
    parent = subprocess.run(
        ["python3", "-c", script, *args.argv(tmp_path / "orphan.sock")], timeout=30, check=True
    )
    assert parent.returncode == 0
    deadline = time.monotonic() + 30
    while _nbdkit_pids(str(tmp_path / "orphan.sock")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _nbdkit_pids(str(tmp_path / "orphan.sock"))


def _nbdkit_pids(marker: str) -> Sequence[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and cmdline.startswith(b"nbdkit"):
                pids.append(int(entry.name))
    return pids
