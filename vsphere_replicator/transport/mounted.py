"""A datastore seen as a local or NFS directory: positional reads and writes, fsync on flush."""

from __future__ import annotations

import os
from pathlib import Path

from vsphere_replicator.errors import TransportError
from vsphere_replicator.transport.base import BlockDevice, check_range


class FileBlockSource(BlockDevice):
    """Reads a flat disk image file with pread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise TransportError(f"cannot open {self.path}: {exc.strerror}") from exc
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.size, str(self.path))
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise TransportError(f"short read from {self.path} at {offset}: {len(data)} of {length} bytes")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FileBlockSink(BlockDevice):
    """Writes a flat disk image file with pwrite; `flush()` makes the data durable (fsync)."""

    def __init__(self, path: str | Path, size: int | None = None) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | (os.O_CREAT if size is not None else 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
            if size is not None and os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
        except OSError as exc:
            raise TransportError(f"cannot open {self.path} for writing: {exc.strerror}") from exc
        self.size = os.fstat(self._fd).st_size

    def write(self, offset: int, data: bytes) -> None:
        check_range(offset, len(data), self.size, str(self.path))
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
