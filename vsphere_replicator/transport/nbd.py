"""An NBD client: the production path on ESXi, through nbdkit's VDDK plugin.

On real ESXi a running VM's disks cannot be read over `/folder`; users run
`nbdkit vddk ... snapshot=<moref> transports=nbdssl:nbd thumbprint=...` (as
virt-v2v and migratekit do) and point this client at it. It speaks the
fixed-newstyle handshake (NBD_OPT_GO, falling back to NBD_OPT_EXPORT_NAME)
and simple replies for READ, WRITE and FLUSH, over a Unix socket or TCP.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from vsphere_replicator.errors import InvalidInput, TransportError
from vsphere_replicator.transport.base import BlockDevice, check_range

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_EXPORT_NAME = 1
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
MAX_REQUEST = 32 << 20  # what servers accept without negotiating more


@dataclass(frozen=True, slots=True)
class NBDEndpoint:
    """Where the NBD server listens: a Unix socket path, or host and port."""

    socket_path: str | None = None
    host: str | None = None
    port: int = 10809
    export: str = ""

    def __post_init__(self) -> None:
        if (self.socket_path is None) == (self.host is None):
            raise InvalidInput("an NBD endpoint is a Unix socket path or a host, not both or neither")


class NBDConnection:
    """One negotiated NBD connection. Not shared between threads."""

    def __init__(self, endpoint: NBDEndpoint, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        try:
            if endpoint.socket_path is not None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(endpoint.socket_path)
            else:
                self._sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except OSError as exc:
            raise TransportError(f"cannot reach the NBD server at {self._where()}: {exc}") from exc
        self._handle = 0
        self.size, self.flags = self._handshake()

    def _where(self) -> str:
        e = self.endpoint
        return e.socket_path if e.socket_path is not None else f"{e.host}:{e.port}"

    def _recv(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            try:
                chunk = self._sock.recv(min(left, 1 << 20))
            except OSError as exc:
                raise TransportError(f"NBD connection to {self._where()} failed: {exc}") from exc
            if not chunk:
                raise TransportError(f"the NBD server at {self._where()} closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise TransportError(f"NBD connection to {self._where()} failed: {exc}") from exc

    def _handshake(self) -> tuple[int, int]:
        magic, opt_magic, server_flags = struct.unpack(">QQH", self._recv(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT or not server_flags & FLAG_FIXED_NEWSTYLE:
            raise TransportError(f"{self._where()} does not speak fixed-newstyle NBD")
        no_zeroes = bool(server_flags & FLAG_NO_ZEROES)
        self._send(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if no_zeroes else 0)))
        name = self.endpoint.export.encode()
        payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self._send(struct.pack(">QII", IHAVEOPT, OPT_GO, len(payload)) + payload)
        size = flags = None
        while True:
            reply_magic, option, reply, length = struct.unpack(">QIII", self._recv(20))
            data = self._recv(length)
            if reply_magic != REPLY_MAGIC or option != OPT_GO:
                raise TransportError(f"{self._where()} sent a malformed option reply")
            if reply == REP_INFO and len(data) >= 2 and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                size, flags = struct.unpack(">QH", data[2:12])
            elif reply == REP_ACK:
                break
            elif reply == REP_ERR_UNSUP:
                return self._export_name(no_zeroes)
            elif reply & (1 << 31):
                message = data.decode(errors="replace")
                raise TransportError(
                    f"{self._where()} refused export {self.endpoint.export!r}: {message or reply}"
                )
        if size is None or flags is None:
            raise TransportError(f"{self._where()} did not describe the export")
        return size, flags

    def _export_name(self, no_zeroes: bool) -> tuple[int, int]:
        name = self.endpoint.export.encode()
        self._send(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, len(name)) + name)
        size, flags = struct.unpack(">QH", self._recv(10))
        if not no_zeroes:
            self._recv(124)
        return size, flags

    def _request(self, command: int, offset: int, length: int, data: bytes = b"") -> bytes:
        self._handle += 1
        self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, command, self._handle, offset, length) + data)
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise TransportError(f"{self._where()} sent an unexpected reply")
        if error:
            raise TransportError(
                f"NBD {('read', 'write', '', 'flush')[command]} at {offset} failed: errno {error}"
            )
        return self._recv(length) if command == CMD_READ else b""

    def read(self, offset: int, length: int) -> bytes:
        out = []
        while length:
            n = min(length, MAX_REQUEST)
            out.append(self._request(CMD_READ, offset, n))
            offset, length = offset + n, length - n
        return b"".join(out)

    def write(self, offset: int, data: bytes) -> None:
        if self.flags & TFLAG_READ_ONLY:
            raise TransportError(f"the NBD export at {self._where()} is read-only")
        view = memoryview(data)
        while view:
            n = min(len(view), MAX_REQUEST)
            self._request(CMD_WRITE, offset, n, bytes(view[:n]))
            view, offset = view[n:], offset + n

    def flush(self) -> None:
        if self.flags & TFLAG_SEND_FLUSH:
            self._request(CMD_FLUSH, 0, 0)

    def close(self) -> None:
        with contextlib.suppress(TransportError):  # already gone
            self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        self._sock.close()


class NBDBlockDevice(BlockDevice):
    """A BlockSource and BlockSink over a few NBD connections, safe to use from several threads."""

    def __init__(self, endpoint: NBDEndpoint, *, connections: int = 4) -> None:
        first = NBDConnection(endpoint)
        self.size = first.size
        self.read_only = bool(first.flags & TFLAG_READ_ONLY)
        self._endpoint = endpoint
        self._idle: queue.LifoQueue[NBDConnection] = queue.LifoQueue()
        self._idle.put(first)
        self._all = [first]
        self._limit = max(1, connections)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[NBDConnection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = len(self._all) < self._limit
                if grow:
                    conn = NBDConnection(self._endpoint)
                    self._all.append(conn)
            if not grow:
                conn = self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put(conn)

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.size, "the NBD export")
        with self._connection() as conn:
            return conn.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        check_range(offset, len(data), self.size, "the NBD export")
        with self._connection() as conn:
            conn.write(offset, data)

    def flush(self) -> None:
        for conn in self._all:
            with self._lock:
                conn.flush()

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all = []
