"""The allocation map from NBD block status (base:allocation), against real servers.

nbdkit (a known extent list, and the sparse-random plugin) and qemu-nbd
(sparse raw and qcow2 images) serve; the independent readers are the extent
list itself, libnbd's `nbdinfo --map` and `qemu-img map --output=json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _listening
from vsphere_replicator.errors import TransportError
from vsphere_replicator.extents import Extent, merge_extents
from vsphere_replicator.transport.nbd import (
    BASE_ALLOCATION,
    MAX_STATUS_REQUEST,
    STATE_ZERO,
    NBDBlockDevice,
    NBDConnection,
    NBDEndpoint,
)

MIB = 1 << 20


@contextlib.contextmanager
def serving(argv: list[str], sock: Path) -> Iterator[NBDEndpoint]:
    """Run an NBD server (argv listens on `sock`) until the block ends."""
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(400):  # at most ~20 s
            if server.poll() is not None:
                raise AssertionError(
                    f"{argv[0]} exited: {server.stderr.read().decode() if server.stderr else ''}"
                )
            if _listening(sock):  # the file appears at bind(), a moment before the server accepts
                break
            time.sleep(0.05)
        yield NBDEndpoint(socket_path=str(sock))
    finally:
        server.terminate()
        server.wait(timeout=10)


def nbdkit(tmp_path: Path, *args: str) -> contextlib.AbstractContextManager[NBDEndpoint]:
    sock = tmp_path / "nbdkit.sock"
    return serving(["nbdkit", "-f", "-r", "-U", str(sock), *args], sock)


def qemu_nbd(image: Path, fmt: str) -> contextlib.AbstractContextManager[NBDEndpoint]:
    sock = image.with_suffix(".sock")
    return serving(["qemu-nbd", "-r", "-t", "-e", "4", "-f", fmt, "-k", str(sock), str(image)], sock)


def nbdinfo_data(endpoint: NBDEndpoint) -> tuple[Extent, ...]:
    """What libnbd's nbdinfo maps as not reading zeros."""
    done = subprocess.run(
        ["nbdinfo", "--map", "--json", f"nbd+unix:///?socket={endpoint.socket_path}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return merge_extents(
        Extent(e["offset"], e["length"]) for e in json.loads(done.stdout) if not e["type"] & STATE_ZERO
    )


def qemu_img_data(image: Path, fmt: str) -> tuple[Extent, ...]:
    """What qemu-img maps as not reading zeros."""
    done = subprocess.run(
        ["qemu-img", "map", "-f", fmt, "--output=json", str(image)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return merge_extents(Extent(e["start"], e["length"]) for e in json.loads(done.stdout) if not e["zero"])


def test_a_known_extent_list_keeps_data_and_bare_holes_and_drops_zeros(tmp_path: Path) -> None:
    listing = tmp_path / "extents"
    # data, a hole that does not read as zeros, zeros that are allocated, a hole of zeros, data
    listing.write_text("0 1M\n4M 64K hole\n8M 1M zero\n9M 1M hole,zero\n10M 512K\n")
    with nbdkit(tmp_path, "--filter=extentlist", "pattern", "16M", f"extentlist={listing}") as endpoint:
        conn = NBDConnection(endpoint, meta_context=BASE_ALLOCATION)
        try:
            runs = conn.block_status(0, 16 * MIB)
            assert sum(length for length, _ in runs) == 16 * MIB
            assert (64 << 10, 1) in runs and (MIB, 2) in runs
            allocated = conn.allocated()
        finally:
            conn.close()
        expected = (Extent(0, MIB), Extent(4 * MIB, 64 << 10), Extent(10 * MIB, 512 << 10))
        assert allocated == expected
        assert nbdinfo_data(endpoint) == expected
        device = NBDBlockDevice(endpoint)
        try:
            assert device.allocated() == expected
            assert conn.context_id is not None
        finally:
            device.close()


def test_many_runs_asked_range_after_range_match_libnbd(tmp_path: Path) -> None:
    # Larger than one request can name (32-bit lengths): the client asks again from where it stopped.
    size = 6 << 30
    args = ("sparse-random", str(size), "seed=7", "percent=30", "runlength=1048576")
    with nbdkit(tmp_path, *args) as endpoint:
        conn = NBDConnection(endpoint, meta_context=BASE_ALLOCATION)
        try:
            first = conn.block_status(0, size)
            allocated = conn.allocated()
        finally:
            conn.close()
        reference = nbdinfo_data(endpoint)
    assert len(reference) > 500
    assert sum(length for length, _ in first) <= MAX_STATUS_REQUEST < size
    assert allocated == reference
    assert allocated[-1].end > MAX_STATUS_REQUEST
    assert 0.2 < sum(e.length for e in allocated) / size < 0.4


def test_qemu_nbd_over_a_sparse_raw_file_matches_qemu_img_map(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    rng = random.Random(11)
    with image.open("wb") as f:
        f.truncate(256 * MIB)
        for _ in range(40):
            f.seek(rng.randrange(0, 255 * MIB) // 4096 * 4096)
            f.write(rng.randbytes(rng.randrange(1, 300_000)))
        f.seek(200 * MIB)
        f.write(bytes(MIB))  # zeros written: allocated data all the same
    with qemu_nbd(image, "raw") as endpoint:
        device = NBDBlockDevice(endpoint)
        try:
            allocated = device.allocated()
        finally:
            device.close()
    assert allocated == qemu_img_data(image, "raw")
    assert any(e.start <= 200 * MIB < e.end for e in allocated)
    assert sum(e.length for e in allocated) < os.stat(image).st_blocks * 512 + MIB


def test_qemu_nbd_over_qcow2_matches_qemu_img_map_and_structured_reads_match(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    writes = ["write -P 7 1M 192K", "write -z 8M 1M", "write -P 3 9M 4K", "write -P 9 60M 4M"]
    subprocess.run(
        ["qemu-io", *(a for w in writes for a in ("-c", w)), str(image)],
        check=True,
        capture_output=True,
    )
    with qemu_nbd(image, "qcow2") as endpoint:
        conn = NBDConnection(endpoint, meta_context=BASE_ALLOCATION)
        device = NBDBlockDevice(endpoint, connections=1)
        try:
            allocated = conn.allocated()
            # Structured replies on the status connection: data and hole chunks make the same bytes.
            for offset, length in ((0, 2 * MIB), (8 * MIB, 2 * MIB), (59 * MIB, 5 * MIB)):
                assert conn.read(offset, length) == device.read(offset, length)
        finally:
            conn.close()
            device.close()
    assert allocated == qemu_img_data(image, "qcow2")
    assert allocated == (Extent(MIB, 192 << 10), Extent(9 * MIB, 64 << 10), Extent(60 * MIB, 4 * MIB))


def test_a_server_without_structured_replies_gives_no_allocation_map(tmp_path: Path) -> None:
    with nbdkit(tmp_path, "--no-sr", "pattern", "16M") as endpoint:
        device = NBDBlockDevice(endpoint)
        try:
            with pytest.raises(TransportError, match="structured replies"):
                device.allocated()
            assert len(device.read(0, MIB)) == MIB  # the data path is unaffected
        finally:
            device.close()
