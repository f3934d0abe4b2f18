"""A disk's backing chain as the VDDK stand-in serves it: flat base, vmfsSparse redo logs above.

With `lab up --redo-logs` a snapshot's layers are what ESXi writes on VMFS: a
descriptor with `createType="vmfsSparse"` over a COWD `-delta.vmdk` extent
that holds only the grains written while it was the current layer (the
format is described in the lab's Go source, `vcsim/redolog.go`, which
writes it; qemu's `block/vmdk.c` reads the same files). Reading a layer
means reading its chain: each sector from the newest layer that holds it,
the flat base disk underneath. Writes go into the newest layer, allocating
its grains (and its grain tables) at the end of the file.

It runs inside nbdkit's embedded Python, imported by path from the stand-in:
the standard library only, no import of vsphere_replicator.
"""

from __future__ import annotations

import array
import errno
import os
import re
import struct
import sys

SECTOR = 512
COWD_MAGIC = b"COWD"
TABLE_ENTRIES = 4096  # grains per grain table in a COWD extent
_HEADER = struct.Struct("<4sIIIIIII")  # magic, version, flags, sectors, grain, dir offset, entries, free
_EXTENT_LINE = re.compile(r'^RW (\d+) (VMFS|VMFSSPARSE|FLAT) "([^"]+)"', re.MULTILINE)
_PARENT = re.compile(r'^parentFileNameHint="([^"]*)"', re.MULTILINE)


class ChainError(Exception):
    """A layer or one of its parents cannot be opened or is not what its descriptor says."""


def _table_array(raw: bytes) -> array.array[int]:
    table = array.array("I")
    table.frombytes(raw)
    if sys.byteorder != "little":
        table.byteswap()
    return table


class _RedoLog:
    """One COWD extent: a grain directory of grain tables of 512-byte grains."""

    def __init__(self, path: str, writable: bool) -> None:
        self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        header = os.pread(self.fd, _HEADER.size, 0)
        if len(header) < _HEADER.size:
            os.close(self.fd)
            raise ChainError(f"{path}: no COWD header")
        magic, _version, _flags, sectors, grain, dir_offset, entries, free = _HEADER.unpack(header)
        if magic != COWD_MAGIC or grain != 1:
            os.close(self.fd)
            raise ChainError(f"{path} is not a COWD redo log of 512-byte grains")
        self.sectors: int = sectors
        self.dir_at: int = dir_offset * SECTOR
        self.free: int = free
        self.directory = _table_array(os.pread(self.fd, entries * 4, self.dir_at))
        self.tables: dict[int, array.array[int]] = {}  # read once a request needs them

    def table(self, index: int) -> array.array[int] | None:
        if index >= len(self.directory) or self.directory[index] == 0:
            return None
        if index not in self.tables:
            raw = os.pread(self.fd, TABLE_ENTRIES * 4, self.directory[index] * SECTOR)
            self.tables[index] = _table_array(raw)
        return self.tables[index]

    def held(self, first: int, last: int) -> list[tuple[int, int, int]]:
        """(sector, file sector, count) runs of [first, last) this layer holds."""
        runs: list[tuple[int, int, int]] = []
        for index in range(first // TABLE_ENTRIES, (last - 1) // TABLE_ENTRIES + 1):
            table = self.table(index)
            if table is None:
                continue
            base = index * TABLE_ENTRIES
            for k in range(max(first - base, 0), min(last - base, TABLE_ENTRIES)):
                at = table[k]
                if not at:
                    continue
                sector = base + k
                if runs and runs[-1][0] + runs[-1][2] == sector and runs[-1][1] + runs[-1][2] == at:
                    runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
                else:
                    runs.append((sector, at, 1))
        return runs

    def _append(self, sectors: int) -> int:
        at = self.free
        self.free += sectors
        os.ftruncate(self.fd, self.free * SECTOR)
        return at

    def put(self, sector: int, data: bytes) -> None:
        """Write whole sectors from `sector` on, allocating tables and grains this layer lacks."""
        count = len(data) // SECTOR
        done = 0
        while done < count:
            s = sector + done
            index, slot = divmod(s, TABLE_ENTRIES)
            table = self.table(index)
            if table is None:
                at = self._append(TABLE_ENTRIES * 4 // SECTOR)
                os.pwrite(self.fd, struct.pack("<I", at), self.dir_at + index * 4)
                self.directory[index] = at
                table = self.tables[index] = array.array("I", bytes(TABLE_ENTRIES * 4))
            # A run within this table: sectors already held, or a fresh run of new grains.
            n = min(count - done, TABLE_ENTRIES - slot)
            if table[slot]:
                run = 1
                while run < n and table[slot + run] == table[slot] + run:
                    run += 1
                at = table[slot]
            else:
                run = 1
                while run < n and not table[slot + run]:
                    run += 1
                at = self._append(run)
                for k in range(run):
                    table[slot + k] = at + k
                entries = array.array("I", table[slot : slot + run])
                if sys.byteorder != "little":
                    entries.byteswap()
                os.pwrite(self.fd, entries.tobytes(), self.directory[index] * SECTOR + slot * 4)
            os.pwrite(self.fd, data[done * SECTOR : (done + run) * SECTOR], at * SECTOR)
            done += run
        os.pwrite(self.fd, struct.pack("<I", self.free), 28)


class Chain:
    """A layer and its parents, newest first; the newest open for writing when asked."""

    def __init__(self, descriptor: str, *, writable: bool = False) -> None:
        self.base = -1  # the flat base's descriptor, last in the chain
        self.redo_logs: list[_RedoLog] = []
        self.size = 0
        path, depth = descriptor, 0
        try:
            while True:
                text = self._descriptor(path)
                extent = _EXTENT_LINE.search(text)
                if extent is None:
                    raise ChainError(f"{path}: no extent line a VDDK disk can have")
                sectors, kind, name = int(extent.group(1)), extent.group(2), extent.group(3)
                extent_path = os.path.join(os.path.dirname(path), name)
                if depth == 0:
                    self.size = sectors * SECTOR
                if kind == "VMFSSPARSE":
                    self.redo_logs.append(_RedoLog(extent_path, writable and depth == 0))
                else:
                    self.base = os.open(extent_path, os.O_RDWR if writable and depth == 0 else os.O_RDONLY)
                    return
                parent = _PARENT.search(text)
                if parent is None or not parent.group(1):
                    raise ChainError(f"{path}: a redo log without parentFileNameHint")
                path = os.path.join(os.path.dirname(path), parent.group(1))
                depth += 1
                if depth > 255:
                    raise ChainError(f"{descriptor}: the chain does not end")
        except OSError as exc:
            self.close()
            raise ChainError(f"{path}: {exc.strerror}") from None
        except ChainError:
            self.close()
            raise

    @staticmethod
    def _descriptor(path: str) -> str:
        with open(path, "rb") as f:
            return f.read(64 * 1024).decode("utf-8", "replace")

    def close(self) -> None:
        for log in self.redo_logs:
            os.close(log.fd)
        self.redo_logs = []
        if self.base >= 0:
            os.close(self.base)
            self.base = -1

    @property
    def top_fd(self) -> int:
        return self.redo_logs[0].fd if self.redo_logs else self.base

    def read(self, offset: int, length: int) -> bytes:
        first, last = offset // SECTOR, -(-(offset + length) // SECTOR)
        out = bytearray(os.pread(self.base, (last - first) * SECTOR, first * SECTOR))
        out.extend(bytes((last - first) * SECTOR - len(out)))  # past the file's end: zeros
        resolved = bytearray(last - first)
        for log in self.redo_logs:
            for sector, at, count in log.held(first, last):
                data = os.pread(log.fd, count * SECTOR, at * SECTOR)
                for k in range(count):
                    i = sector - first + k
                    if not resolved[i]:
                        resolved[i] = 1
                        out[i * SECTOR : (i + 1) * SECTOR] = data[k * SECTOR : (k + 1) * SECTOR]
        skip = offset - first * SECTOR
        return bytes(out[skip : skip + length])

    def write(self, offset: int, data: bytes) -> None:
        if not self.redo_logs:
            view = memoryview(data)
            while view:
                n = os.pwrite(self.base, view, offset)
                view, offset = view[n:], offset + n
            return
        first, last = offset // SECTOR, -(-(offset + len(data)) // SECTOR)
        whole = bytearray(self.read(first * SECTOR, (last - first) * SECTOR))
        whole[offset - first * SECTOR : offset - first * SECTOR + len(data)] = data
        self.redo_logs[0].put(first, bytes(whole))

    def allocated(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, allocated) runs covering [offset, offset+length)."""
        end = offset + length
        spans = self._base_data(offset, end)
        first, last = offset // SECTOR, -(-end // SECTOR)
        for log in self.redo_logs:
            for sector, _at, count in log.held(first, last):
                spans.append((max(sector * SECTOR, offset), min((sector + count) * SECTOR, end)))
        spans.sort()
        runs: list[tuple[int, int, bool]] = []
        position = offset
        for lo, hi in spans:
            if hi <= position:
                continue
            if lo > position:
                runs.append((position, lo - position, False))
                position = lo
            if runs and runs[-1][2] and runs[-1][0] + runs[-1][1] == position:
                runs[-1] = (runs[-1][0], hi - runs[-1][0], True)
            else:
                runs.append((position, hi - position, True))
            position = hi
        if position < end:
            runs.append((position, end - position, False))
        return runs

    def _base_data(self, offset: int, end: int) -> list[tuple[int, int]]:
        stored = os.fstat(self.base).st_size
        spans, position = [], offset
        while position < min(end, stored):
            try:
                data = os.lseek(self.base, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after `position`
                    raise
                break
            if data >= end:
                break
            hole = min(os.lseek(self.base, data, os.SEEK_HOLE), end)
            spans.append((data, hole))
            position = hole
        return spans
