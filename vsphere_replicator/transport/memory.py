"""An in-memory block device: both a source and a sink, for tests of code built on transports."""

from __future__ import annotations

from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.transport.base import BlockDevice, check_range


class MemoryBlockDevice(BlockDevice):
    """A disk image held in memory; `flushes` counts flush() calls."""

    def __init__(self, size: int, data: bytes = b"") -> None:
        if len(data) > size:
            raise InvalidInput("initial data is larger than the device")
        self.size = size
        self._image = bytearray(data) + bytearray(size - len(data))
        self.flushes = 0

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.size, "the device")
        return bytes(self._image[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        check_range(offset, len(data), self.size, "the device")
        self._image[offset : offset + len(data)] = data

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return bytes(self._image)
