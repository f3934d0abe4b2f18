"""The NBD client against real servers (qemu-nbd and nbdkit) serving a lab snapshot disk."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import labutil
from tests.conftest import DISK_SIZE, StartNBD
from vsphere_replicator.cbt import change_ids_at, enable_cbt
from vsphere_replicator.delta import plan_delta, read_delta
from vsphere_replicator.errors import InvalidInput, TransportError
from vsphere_replicator.inventory import snapshot_disks
from vsphere_replicator.snapshots import create_snapshot
from vsphere_replicator.transport import FileBlockSink, FileBlockSource, NBDBlockDevice
from vsphere_replicator.verify import first_mismatch


def test_reads_a_snapshot_disk_exactly(
    lab: Any, conn: Any, control: Any, vm_name: str, nbd_server: StartNBD
) -> None:
    control.write_random(vm_name, offset=12345, length=3 << 20, seed=1)
    snap = create_snapshot(conn, vm_name, "nbd").snapshot
    frozen = labutil.layer_image(lab, snapshot_disks(conn, snap.moref)[0].file_name)
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
    lab: Any, conn: Any, control: Any, vm_name: str, nbd_server: StartNBD, tmp_path: Path
) -> None:
    info = enable_cbt(conn, vm_name)
    base = create_snapshot(conn, info, "base").snapshot
    copy = tmp_path / "copy.img"
    shutil.copyfile(labutil.layer_image(lab, snapshot_disks(conn, base.moref)[0].file_name), copy)
    rng = random.Random(5)
    for i in range(8):
        control.write_random(vm_name, offset=rng.randrange(0, DISK_SIZE - 9000), length=9000, seed=i)
    top = create_snapshot(conn, info, "top").snapshot
    key = info.disks[0].key
    since = labutil.tracked(change_ids_at(conn, base))[key]
    plan = plan_delta(conn, info, top, {key: since, info.disks[1].key: "*"})
    frozen = labutil.layer_image(lab, snapshot_disks(conn, top.moref)[0].file_name)
    sink = FileBlockSink(copy)
    sources = {key: NBDBlockDevice(nbd_server(frozen))}
    for disk, offset, data in read_delta(
        plan, lambda d: sources.get(d.key) or FileBlockSource(labutil.layer_image(lab, d.file_name))
    ):
        if disk == key:
            sink.write(offset, data)
    sink.flush()
    sink.close()
    assert labutil.sha256(copy) == labutil.sha256(frozen)


def test_writes_and_flush_reach_the_image(nbd_server: StartNBD, tmp_path: Path) -> None:
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
