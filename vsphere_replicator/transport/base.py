"""The transport seam and what sits on top of it: chunking, bounded parallel reads, copying."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.extents import Extent

SECTOR = 512
ALIGN = 4096
DEFAULT_CHUNK = 4 << 20
MAX_CHUNK = 64 << 20


@runtime_checkable
class BlockSource(Protocol):
    """Reads a disk image. `size` is its capacity in bytes.

    The contract every source keeps (tests/test_transport_contract.py runs it
    against each one):

    - `read(offset, length)` returns exactly `length` bytes, never fewer;
      a zero-length read inside the disk returns `b""` without any I/O;
    - a range not inside [0, size] (a negative offset or length, or one
      ending past `size`) raises InvalidInput before any I/O: no short
      read, whatever the transport;
    - a transport failure (after the transport's own retries) raises
      TransportError;
    - `close()` may be called more than once.

    The shipped transports are also context managers (`BlockDevice`):
    `with source:` closes it on the way out.
    """

    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`; InvalidInput outside the disk, TransportError on failure."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BlockSink(Protocol):
    """Writes a disk image; data is durable only after `flush()`.

    `write(offset, data)` keeps the same range rule as `BlockSource.read`
    (InvalidInput outside [0, size], before any I/O; empty data writes
    nothing); a sink that can also read returns what was written, before
    and after `flush()`. `close()` may be called more than once.
    """

    size: int

    def write(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class AllocationMap(Protocol):
    """A source that knows which of its areas may hold data (NBD block status, base:allocation).

    `allocated()` returns them sorted and merged; every byte outside reads as
    zeros. TransportError when the server cannot say.
    """

    def allocated(self) -> tuple[Extent, ...]: ...


def check_range(offset: int, length: int, size: int, where: str) -> None:
    """InvalidInput unless [offset, offset + length) lies inside a device of `size` bytes."""
    if offset < 0 or length < 0 or offset + length > size:
        raise InvalidInput(f"range {offset}+{length} is outside {where} ({size} bytes)")


class BlockDevice:
    """What the shipped transports share: used in a `with` block, they are closed on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def plan_chunks(
    areas: Iterable[Extent], size: int, *, chunk: int = DEFAULT_CHUNK, align: int = ALIGN
) -> Iterator[Extent]:
    """The reads covering `areas` (sorted): aligned to `align` (never past `size`), at most `chunk` long.

    Alignment only widens an area to whole sectors/blocks around it; the
    bytes read stay within 1/`align` of the bytes changed.
    """
    if align % SECTOR or chunk % align or not 0 < chunk <= MAX_CHUNK:
        raise InvalidInput(
            f"chunk ({chunk}) must be a multiple of align ({align}), itself of 512, and <= 64 MiB"
        )
    last_end = 0
    for area in areas:
        if not area.length:
            continue
        begin = max(area.start // align * align, last_end)
        end = min(-(-area.end // align) * align, size)
        while begin < end:
            n = min(chunk, end - begin)
            yield Extent(begin, n)
            begin += n
        last_end = max(last_end, end)


def read_chunks(
    source: BlockSource, chunks: Iterable[Extent], *, workers: int = 4
) -> Iterator[tuple[int, bytes]]:
    """(offset, data) for each chunk, in order, with up to `workers` reads in flight.

    Memory stays bounded: at most `2 * workers` chunks are held at once.
    """
    if workers <= 1:
        for c in chunks:
            yield c.start, source.read(c.start, c.length)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vr-read") as pool:
        pending: deque[tuple[int, Future[bytes]]] = deque()
        for c in chunks:
            pending.append((c.start, pool.submit(source.read, c.start, c.length)))
            if len(pending) >= 2 * workers:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def copy_areas(
    source: BlockSource,
    sink: BlockSink,
    areas: Iterable[Extent],
    *,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 4,
    skip_zero: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy `areas` from source to sink and flush; returns bytes read.

    `skip_zero` leaves all-zero chunks unwritten: only correct where the
    sink is known to hold zeros there (a fresh sparse target).
    """
    if sink.size < source.size:
        raise InvalidInput(f"the target ({sink.size} bytes) is smaller than the source ({source.size} bytes)")
    plan = list(plan_chunks(areas, source.size, chunk=chunk))
    total = sum(c.length for c in plan)
    done = 0
    for offset, data in read_chunks(source, plan, workers=workers):
        if not (skip_zero and data.count(0) == len(data)):
            sink.write(offset, data)
        done += len(data)
        if on_progress is not None:
            on_progress(done, total)
    sink.flush()
    return done
