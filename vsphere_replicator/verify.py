"""Compare two disk images range by range with a fast hash; report the first difference."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.extents import Extent
from vsphere_replicator.transport.base import DEFAULT_CHUNK, BlockSource, plan_chunks, read_chunks


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first byte where the images differ, within the chunk that showed it."""

    offset: int
    chunk_offset: int
    chunk_length: int


def checksum(
    source: BlockSource,
    ranges: Iterable[Extent] | None = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    on_read: Callable[[int], None] | None = None,
) -> str:
    """BLAKE2b of the bytes in `ranges` (the whole disk by default), in order.

    `on_read(n)` is called after each piece of `n` bytes is hashed.
    """
    digest = hashlib.blake2b(digest_size=32)
    plan = plan_chunks(ranges if ranges is not None else [Extent(0, source.size)], source.size, chunk=chunk)
    for _, data in read_chunks(source, plan):
        digest.update(data)
        if on_read is not None:
            on_read(len(data))
    return digest.hexdigest()


def first_mismatch(
    a: BlockSource,
    b: BlockSource,
    ranges: Iterable[Extent] | None = None,
    *,
    chunk: int = DEFAULT_CHUNK,
) -> Mismatch | None:
    """None when `a` and `b` hold the same bytes in `ranges` (default: all of `a`)."""
    if b.size < a.size and ranges is None:
        raise InvalidInput(f"the images differ in size: {a.size} and {b.size} bytes")
    plan = list(plan_chunks(ranges if ranges is not None else [Extent(0, a.size)], a.size, chunk=chunk))
    for (offset, left), (_, right) in zip(read_chunks(a, plan), read_chunks(b, plan), strict=True):
        if hashlib.blake2b(left, digest_size=16).digest() != hashlib.blake2b(right, digest_size=16).digest():
            at = next(i for i, (x, y) in enumerate(zip(left, right, strict=True)) if x != y)
            return Mismatch(offset=offset + at, chunk_offset=offset, chunk_length=len(left))
    return None
