"""Delta reads end to end: apply them to the previous copy and get the snapshot's bytes."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import labutil
from tests.conftest import CBT_BLOCK, DISK_SIZE, lab_vddk
from vsphere_replicator.cbt import change_ids_at, enable_cbt
from vsphere_replicator.delta import http_sources, plan_delta, read_delta
from vsphere_replicator.errors import ChangeIdInvalid, InvalidInput
from vsphere_replicator.extents import Extent
from vsphere_replicator.inventory import SnapshotInfo, VMInfo, snapshot_disks
from vsphere_replicator.snapshots import create_snapshot, remove_snapshot
from vsphere_replicator.transport import FileBlockSink, FileBlockSource, MemoryBlockDevice, copy_areas
from vsphere_replicator.verify import checksum, first_mismatch


def local_sources(lab: Any) -> Any:
    """Each layer's bytes on the lab's local datastores, its chain resolved by qemu-img."""
    return lambda snapshot: lambda disk: FileBlockSource(labutil.layer_image(lab, disk.file_name))


def vddk_sources(conn: Any, vm: VMInfo) -> Any:
    """Each snapshot's disks through VDDK (the lab's stand-in), read-only at that snapshot."""
    access = lab_vddk(conn)
    return lambda snapshot: lambda disk: access.source(disk, vm=vm.moref, snapshot=snapshot.moref)


def apply(plan: Any, sources: Any, copies: dict[int, Path]) -> int:
    sinks = {key: FileBlockSink(path) for key, path in copies.items()}
    moved = 0
    for key, offset, data in read_delta(plan, sources):
        sinks[key].write(offset, data)
        moved += len(data)
    for sink in sinks.values():
        sink.flush()
        sink.close()
    return moved


def assert_same(lab: Any, conn: Any, snap: SnapshotInfo, copies: dict[int, Path]) -> None:
    for disk in snapshot_disks(conn, snap.moref):
        frozen = labutil.layer_image(lab, disk.file_name)
        assert labutil.sha256(frozen) == labutil.sha256(copies[disk.key]), disk.label
        assert labutil.qemu_img_compare_raw(frozen, copies[disk.key]) == 0


def seed(
    lab: Any, conn: Any, control: Any, vm_name: str, tmp_path: Path, sources: Any
) -> tuple[VMInfo, SnapshotInfo, dict[int, Path], int]:
    control.write_random(vm_name, offset=CBT_BLOCK * 7 + 3, length=200_000, seed=1)
    control.write_random(vm_name, offset=DISK_SIZE // 2, length=10, seed=2, disk=1)
    info = enable_cbt(conn, vm_name)
    base = create_snapshot(conn, info, "seed").snapshot
    copies = {}
    for disk in info.disks:
        copies[disk.key] = tmp_path / f"copy-{disk.key}.img"
        FileBlockSink(copies[disk.key], size=disk.capacity).close()
    moved = apply(plan_delta(conn, info, base, {}), sources(base), copies)
    assert_same(lab, conn, base, copies)
    return info, base, copies, moved


@pytest.mark.parametrize("transport", ["vddk", "local"])
def test_seed_then_incremental_rounds_end_byte_exact(
    lab: Any, conn: Any, control: Any, vm_name: str, tmp_path: Path, transport: str
) -> None:
    info = enable_cbt(conn, vm_name)
    sources = vddk_sources(conn, info) if transport == "vddk" else local_sources(lab)
    info, previous, copies, moved = seed(lab, conn, control, vm_name, tmp_path, sources)
    assert moved == 4 * CBT_BLOCK + CBT_BLOCK  # the first full read touched only allocated blocks
    rng = random.Random(11)
    for round_ in range(3):
        for i in range(6):
            control.write_random(
                vm_name,
                offset=rng.randrange(0, DISK_SIZE - 50_000),
                length=rng.randrange(1, 50_000),
                seed=round_ * 10 + i,
                disk=i % 2,
            )
        current = create_snapshot(conn, info, f"round-{round_}").snapshot
        plan = plan_delta(conn, info, current, labutil.tracked(change_ids_at(conn, previous)))
        moved = apply(plan, sources(current), copies)
        assert moved <= plan.total * 1.05 + 8192
        assert_same(lab, conn, current, copies)
        remove_snapshot(conn, info, previous)
        previous = current


def test_a_stale_change_id_falls_back_to_a_full_read(
    lab: Any, conn: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    info = enable_cbt(conn, vm_name)
    sources = vddk_sources(conn, info)
    info, previous, copies, _ = seed(lab, conn, control, vm_name, tmp_path, sources)
    control.cbt_reset(vm_name)
    control.write_random(vm_name, offset=CBT_BLOCK, length=100, seed=9)
    current = create_snapshot(conn, info, "after-reset").snapshot
    with pytest.raises(ChangeIdInvalid):
        plan_delta(conn, info, current, labutil.tracked(change_ids_at(conn, previous)))
    apply(plan_delta(conn, info, current, {}), sources(current), copies)
    assert_same(lab, conn, current, copies)


def test_http_reads_a_flat_base_and_refuses_a_redo_log_naming_vddk(
    lab: Any, conn: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    """`/folder` serves flat extents only; a snapshot's delta layer is refused before any request."""
    info = enable_cbt(conn, vm_name)
    sources = http_sources(conn, info)
    info, previous, copies, _ = seed(lab, conn, control, vm_name, tmp_path, lambda snapshot: sources)
    control.write_random(vm_name, offset=CBT_BLOCK, length=100, seed=9)
    current = create_snapshot(conn, info, "second").snapshot
    plan = plan_delta(conn, info, current, labutil.tracked(change_ids_at(conn, previous)))
    assert all(d.delta_format == "redoLogFormat" for d in plan.disks)
    with pytest.raises(InvalidInput, match=r"delta layer \(redoLogFormat\).*--transport vddk"):
        apply(plan, sources, copies)


def test_dropped_range_reads_are_retried_without_corruption(
    lab: Any, conn: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    info = enable_cbt(conn, vm_name)
    sources = http_sources(conn, info)
    control.write_random(vm_name, offset=0, length=3 << 20, seed=3)
    snap = create_snapshot(conn, info, "full").snapshot
    copies = {}
    for disk in info.disks:
        copies[disk.key] = tmp_path / f"copy-{disk.key}.img"
        FileBlockSink(copies[disk.key], size=disk.capacity).close()
    control.drop_connections(count=3, path="folder")
    apply(plan_delta(conn, info, snap, {}), sources, copies)
    assert control.faults() == []
    assert_same(lab, conn, snap, copies)


def test_first_mismatch_finds_the_byte(lab: Any) -> None:
    a = MemoryBlockDevice(1 << 20, b"x" * 5000)
    b = MemoryBlockDevice(1 << 20, b"x" * 4000 + b"y" + b"x" * 999)
    assert first_mismatch(a, a) is None
    found = first_mismatch(a, b, chunk=64 << 10)
    assert found is not None and found.offset == 4000 and found.chunk_offset == 0
    assert checksum(a) != checksum(b)
    target = MemoryBlockDevice(1 << 20)
    copy_areas(b, target, [Extent(0, 1 << 20)], skip_zero=True)
    assert first_mismatch(b, target) is None and target.flushes == 1
    assert shutil.which("qemu-img")


def test_http_reads_verify_the_pinned_certificate(lab: Any, control: Any, off_vm_name: str) -> None:
    from tests.test_connection import lab_thumbprint
    from vsphere_replicator.connection import connect
    from vsphere_replicator.errors import TLSVerificationFailed
    from vsphere_replicator.inventory import get_vm
    from vsphere_replicator.transport import DatastoreHTTPSource

    data = control.write_random(off_vm_name, offset=4096, length=1000, seed=8)
    pin = lab_thumbprint(lab)
    with connect(lab.host, lab.user, lab.password, port=lab.port, thumbprint=pin) as pinned:
        disk = get_vm(pinned, off_vm_name).disks[0]
        source = DatastoreHTTPSource(pinned, disk.file_name, disk.capacity, datacenter=lab.datacenter)
        assert source.read(4096, 1000) == data
        source.close()
        object.__setattr__(pinned.settings, "thumbprint", "0" * 64)  # as if the certificate had changed
        wrong = DatastoreHTTPSource(pinned, disk.file_name, disk.capacity, datacenter=lab.datacenter)
        with pytest.raises(TLSVerificationFailed):
            wrong.read(0, 512)
