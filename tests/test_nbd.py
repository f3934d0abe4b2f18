"""The NBD client against real servers (qemu-nbd and nbdkit) serving a lab snapshot disk."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import labutil
from tests.conftest import DISK_SIZE
from vsphere_replicator.cbt import change_ids_at, enable_cbt
from vsphere_replicator.delta import plan_delta, read_delta
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import snapshot_disks
from vsphere_replicator.snapshots import create_snapshot
from vsphere_replicator.transport import FileBlockSink, FileBlockSource, NBDBlockDevice, NBDEndpoint
from vsphere_replicator.transport.base import TransportError
from vsphere_replicator.verify import first_mismatch

SERVERS = ["qemu-nbd", "nbdkit"]


def serve(server: str, image: Path, sock: Path, *, read_only: bool) -> subprocess.Popen[bytes]:
    if server == "qemu-nbd":
        args = [
            "qemu-nbd",
            "-f",
            "raw",
            "-k",
            str(sock),
            "-t",
            "-e",
            "8",
            *(["-r"] if read_only else []),
            str(image),
        ]
    else:
        args = ["nbdkit", "-f", "-U", str(sock), *(["-r"] if read_only else []), "file", f"file={image}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"{server} did not start: {process.stderr.read().decode() if process.stderr else ''}"
            )
        time.sleep(0.05)
    return process


@pytest.fixture(params=SERVERS)
def nbd_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if shutil.which(request.param) is None:
        pytest.fail(f"{request.param} is not installed: scripts/setup.sh installs it")
    started: list[subprocess.Popen[bytes]] = []

    def start(image: Path, *, read_only: bool = True) -> NBDEndpoint:
        sock = tmp_path / f"nbd-{len(started)}.sock"
        started.append(serve(request.param, image, sock, read_only=read_only))
        return NBDEndpoint(socket_path=str(sock))

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def test_reads_a_snapshot_disk_exactly(
    lab: Any, conn: Any, control: Any, vm_name: str, nbd_server: Any
) -> None:
    control.write_random(vm_name, offset=12345, length=3 << 20, seed=1)
    snap = create_snapshot(conn, vm_name, "nbd").snapshot
    frozen = labutil.local_extent(lab, snapshot_disks(conn, snap.moref)[0].file_name)
    device = NBDBlockDevice(nbd_server(frozen), connections=3)
    try:
        assert device.size == DISK_SIZE and device.read_only
        assert device.read(12345, 100) == frozen.read_bytes()[12345:12445]
        assert first_mismatch(FileBlockSource(frozen), device) is None
        with pytest.raises(InvalidInput):
            device.read(DISK_SIZE - 10, 20)
        with pytest.raises(TransportError, match="read-only"):
            device.write(0, b"x")
    finally:
        device.close()


def test_a_delta_read_over_nbd_applied_to_a_copy(
    lab: Any, conn: Any, control: Any, vm_name: str, nbd_server: Any, tmp_path: Path
) -> None:
    info = enable_cbt(conn, vm_name)
    base = create_snapshot(conn, info, "base").snapshot
    copy = tmp_path / "copy.img"
    shutil.copyfile(labutil.local_extent(lab, snapshot_disks(conn, base.moref)[0].file_name), copy)
    rng = random.Random(5)
    for i in range(8):
        control.write_random(vm_name, offset=rng.randrange(0, DISK_SIZE - 9000), length=9000, seed=i)
    top = create_snapshot(conn, info, "top").snapshot
    key = info.disks[0].key
    plan = plan_delta(conn, info, top, {key: change_ids_at(conn, base)[key], info.disks[1].key: "*"})
    frozen = labutil.local_extent(lab, snapshot_disks(conn, top.moref)[0].file_name)
    sink = FileBlockSink(copy)
    sources = {key: NBDBlockDevice(nbd_server(frozen))}
    for disk, offset, data in read_delta(
        plan, lambda d: sources.get(d.key) or FileBlockSource(labutil.local_extent(lab, d.file_name))
    ):
        if disk == key:
            sink.write(offset, data)
    sink.flush()
    sink.close()
    assert labutil.sha256(copy) == labutil.sha256(frozen)


def test_writes_and_flush_reach_the_image(nbd_server: Any, tmp_path: Path) -> None:
    image = tmp_path / "target.img"
    image.write_bytes(b"\0" * (4 << 20))
    device = NBDBlockDevice(nbd_server(image, read_only=False))
    try:
        data = random.Random(3).randbytes(1 << 20)
        device.write(512 * 3, data)
        device.flush()
        assert device.read(512 * 3, len(data)) == data
    finally:
        device.close()
    assert image.read_bytes()[1536 : 1536 + len(data)] == data
