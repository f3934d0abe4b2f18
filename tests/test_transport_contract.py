"""The BlockSource/BlockSink contract, run against every transport the package ships.

One suite, parametrised over the backends (as borg's repository tests and
benji's storage tests are): memory, a mounted path (a file), NBD through
qemu-nbd and through nbdkit, the datastore HTTP endpoint of the lab, and
VDDK (a private nbdkit per device, with the lab's VDDK stand-in as plugin,
on the disk of a powered-off VM: VDDK writes only to a VM that is off).
Each backend hands out a source and a sink over the same bytes; for HTTP,
which only reads, the sink is the datastore's mounted path (the lab's
datastores are local directories), so what is written there must read back
over HTTP. The rules themselves are documented on `transport.base.BlockSource`.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import pytest

from tests import labutil
from tests.conftest import _fresh_vm, lab_connection, powered_off, serve
from vsphere_replicator.connection import Connection, connect
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.extents import Extent
from vsphere_replicator.inventory import get_vm
from vsphere_replicator.lab import vddk_standin
from vsphere_replicator.transport import (
    BlockSink,
    BlockSource,
    DatastoreHTTPSource,
    FileBlockSink,
    FileBlockSource,
    MemoryBlockDevice,
    NBDBlockDevice,
    NBDEndpoint,
    plan_chunks,
    read_chunks,
)
from vsphere_replicator.transport.base import ALIGN, DEFAULT_CHUNK
from vsphere_replicator.transport.vddk import VDDKBlockDevice, VDDKServer, verified_thumbprint

SIZE = 2 * DEFAULT_CHUNK + 4 * ALIGN  # past one library chunk boundary, small enough to stay fast
BOUNDARY = DEFAULT_CHUNK  # where plan_chunks cuts a long area at its default chunk size


class Source(BlockSource, Protocol):
    """A shipped source: the protocol, and a context manager (transport.base.BlockDevice)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None: ...


class Sink(BlockSink, Protocol):
    """A shipped sink: the protocol, and a context manager (transport.base.BlockDevice)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None: ...


@dataclass
class Backend:
    """Sources and sinks over one disk image whose bytes are `image`."""

    name: str
    image: bytes
    source: Callable[[], Source]
    sink: Callable[[], Sink]

    @property
    def size(self) -> int:
        return len(self.image)


@dataclass(frozen=True)
class LabDisk:
    conn: Connection
    file_name: str
    capacity: int
    local: Path
    datacenter: str


@pytest.fixture(scope="module")
def lab_disk(lab: Any) -> Iterator[LabDisk]:
    """One disk of a VM no other test touches, for every HTTP case of this module."""
    name = _fresh_vm()
    si = labutil.connect(lab)
    try:
        powered_off(si, name)  # /folder serves a running VM's current layer nowhere (vCenter: 500)
    finally:
        labutil.disconnect(si)
    with lab_connection(lab) as conn:
        disk = get_vm(conn, name).disks[0]
        local = labutil.local_extent(lab, disk.file_name)
        yield LabDisk(conn, disk.file_name, disk.capacity, local, lab.datacenter)


def _image(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _file_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "disk.img"
    image = _image(SIZE, 1)
    path.write_bytes(image)
    return Backend("file", image, lambda: FileBlockSource(path), lambda: FileBlockSink(path))


def _memory_backend() -> Backend:
    image = _image(SIZE, 2)
    device = MemoryBlockDevice(SIZE, image)
    return Backend("memory", image, lambda: device, lambda: device)


def _nbd_backend(server: str, tmp_path: Path, started: list[Any]) -> Backend:
    if shutil.which(server) is None:
        pytest.fail(f"{server} is not installed: scripts/setup.sh installs it")
    path = tmp_path / "disk.img"
    image = _image(SIZE, 3)
    path.write_bytes(image)
    sock = tmp_path / "nbd.sock"
    started.append(serve(server, path, sock, read_only=False))
    endpoint = NBDEndpoint(socket_path=str(sock))
    return Backend(server, image, lambda: NBDBlockDevice(endpoint), lambda: NBDBlockDevice(endpoint))


def _http_backend(disk: LabDisk) -> Backend:
    image = _image(disk.capacity, 4)
    with FileBlockSink(disk.local) as sink:
        sink.write(0, image)
        sink.flush()
    return Backend(
        "http",
        image,
        lambda: DatastoreHTTPSource(disk.conn, disk.file_name, disk.capacity, datacenter=disk.datacenter),
        lambda: FileBlockSink(disk.local),
    )


@pytest.fixture(scope="module")
def vddk_disk(lab: Any) -> Iterator[tuple[LabDisk, VDDKServer, str]]:
    """One disk of a powered-off VM (VDDK writes only to a VM that is off), served by the stand-in."""
    name = _fresh_vm()
    si = labutil.connect(lab)
    labutil.wait(labutil.find_vm(si, name).PowerOffVM_Task())
    labutil.disconnect(si)
    with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn:
        vm = get_vm(conn, name)
        disk = vm.disks[0]
        server = VDDKServer(
            host=lab.host,
            port=lab.port,
            user=lab.user,
            password=lab.password,
            thumbprint=verified_thumbprint(conn.settings),
            plugin=str(vddk_standin()),
        )
        local = labutil.local_extent(lab, disk.file_name)
        yield LabDisk(conn, disk.file_name, disk.capacity, local, lab.datacenter), server, vm.moref


def _vddk_backend(disk: LabDisk, server: VDDKServer, vm: str) -> Backend:
    image = _image(disk.capacity, 5)
    with FileBlockSink(disk.local) as sink:
        sink.write(0, image)
        sink.flush()
    return Backend(
        "vddk",
        image,
        lambda: VDDKBlockDevice(server, vm=vm, file=disk.file_name, read_only=True),
        lambda: VDDKBlockDevice(server, vm=vm, file=disk.file_name, read_only=False),
    )


@pytest.fixture(
    params=[
        "memory",
        "file",
        "qemu-nbd",
        "nbdkit",
        pytest.param("http", marks=pytest.mark.lab),
        pytest.param("vddk", marks=pytest.mark.lab),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    started: list[Any] = []
    if request.param == "memory":
        yield _memory_backend()
    elif request.param == "file":
        yield _file_backend(tmp_path)
    elif request.param == "http":
        yield _http_backend(request.getfixturevalue("lab_disk"))
    elif request.param == "vddk":
        yield _vddk_backend(*request.getfixturevalue("vddk_disk"))
    else:
        yield _nbd_backend(request.param, tmp_path, started)
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def _outside(size: int) -> list[tuple[int, int]]:
    """(offset, length) ranges not inside [0, size]: the protocol refuses each before any I/O."""
    return [(-1, 10), (size - 10, 20), (size, 1), (size + ALIGN, 0)]


def test_both_ends_implement_the_protocol_with_the_disk_size(backend: Backend) -> None:
    with backend.source() as source, backend.sink() as sink:
        assert isinstance(source, BlockSource) and isinstance(sink, BlockSink)
        assert source.size == sink.size == backend.size


def test_a_read_at_offset_zero_returns_the_first_bytes(backend: Backend) -> None:
    with backend.source() as source:
        assert source.read(0, 4096) == backend.image[:4096]
        assert source.read(0, 1) == backend.image[:1]


def test_a_read_of_the_last_byte_returns_it(backend: Backend) -> None:
    with backend.source() as source:
        assert source.read(backend.size - 1, 1) == backend.image[-1:]
        assert source.read(backend.size - 4096, 4096) == backend.image[-4096:]


def test_a_read_across_a_chunk_boundary_is_seamless(backend: Backend) -> None:
    with backend.source() as source:
        assert source.read(BOUNDARY - 1000, 3000) == backend.image[BOUNDARY - 1000 : BOUNDARY + 2000]
        plan = list(plan_chunks([Extent(BOUNDARY - 5000, 10_000)], source.size, chunk=2 * ALIGN))
        assert BOUNDARY in [c.end for c in plan[:-1]]  # the plan is cut at the boundary
        pieces = list(read_chunks(source, plan, workers=2))
        assert [offset for offset, _ in pieces] == [c.start for c in plan]
        joined = b"".join(data for _, data in pieces)
        assert joined == backend.image[plan[0].start : plan[-1].end]


def test_a_zero_length_read_inside_the_disk_is_empty(backend: Backend) -> None:
    with backend.source() as source:
        assert source.read(0, 0) == b""
        assert source.read(BOUNDARY, 0) == b""
        assert source.read(backend.size, 0) == b""


def test_a_read_outside_the_disk_is_refused_never_cut_short(backend: Backend) -> None:
    with backend.source() as source:
        for offset, length in [*_outside(backend.size), (0, -1)]:
            with pytest.raises(InvalidInput, match="outside"):
                source.read(offset, length)
        assert source.read(0, 16) == backend.image[:16]  # still usable after a refusal


def test_written_bytes_read_back_through_a_fresh_source(backend: Backend) -> None:
    writes = [(0, b"\x01" * 4096), (BOUNDARY - 700, b"\x02" * 1500), (backend.size - 3, b"\x03\x04\x05")]
    with backend.sink() as sink:
        for offset, data in writes:
            sink.write(offset, data)
        sink.flush()
    expected = bytearray(backend.image)
    for offset, data in writes:
        expected[offset : offset + len(data)] = data
    with backend.source() as source:
        for offset, data in writes:
            assert source.read(offset, len(data)) == data
        assert source.read(BOUNDARY - 2000, 4000) == expected[BOUNDARY - 2000 : BOUNDARY + 2000]


def test_an_empty_write_changes_nothing(backend: Backend) -> None:
    with backend.sink() as sink:
        sink.write(0, b"")
        sink.write(backend.size, b"")
        sink.flush()
    with backend.source() as source:
        assert source.read(0, 4096) == backend.image[:4096]
        assert source.read(backend.size - 1, 1) == backend.image[-1:]


def test_a_write_outside_the_disk_is_refused_and_writes_nothing(backend: Backend) -> None:
    with backend.sink() as sink:
        for offset, length in _outside(backend.size):
            with pytest.raises(InvalidInput, match="outside"):
                sink.write(offset, b"\xff" * length)
        sink.flush()
    with backend.source() as source:
        assert source.read(backend.size - 10, 10) == backend.image[-10:]
        assert source.read(0, 10) == backend.image[:10]


def test_close_may_be_called_twice(backend: Backend) -> None:
    source, sink = backend.source(), backend.sink()
    source.read(0, 1)
    sink.flush()
    for end in (source, sink):
        end.close()
        end.close()


def test_leaving_a_with_block_closes_it_even_on_error(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[object] = []
    for factory in (backend.source, backend.sink):
        device = factory()
        real_close = type(device).close

        def spy(self: Any, real: Callable[[Any], None] = real_close) -> None:
            closed.append(self)
            real(self)

        monkeypatch.setattr(type(device), "close", spy)
        with pytest.raises(RuntimeError, match="inside"), device as entered:
            assert entered is device
            raise RuntimeError("inside the block")
        assert closed[-1] is device
        monkeypatch.undo()
