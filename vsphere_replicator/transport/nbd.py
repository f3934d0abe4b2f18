"""An NBD client: the production path on ESXi, through nbdkit's VDDK plugin.

On real ESXi a running VM's disks cannot be read over `/folder`; users run
`nbdkit vddk ... snapshot=<moref> transports=nbdssl:nbd thumbprint=...` (as
virt-v2v and migratekit do) and point this client at it. It speaks the
fixed-newstyle handshake (NBD_OPT_GO, falling back to NBD_OPT_EXPORT_NAME)
and simple replies for READ, WRITE and FLUSH, over a Unix socket or TCP.

The allocation map of an export comes from NBD block status: a connection
opened with `meta_context="base:allocation"` negotiates structured replies
(NBD_OPT_STRUCTURED_REPLY) and the context (NBD_OPT_SET_META_CONTEXT), then
asks NBD_CMD_BLOCK_STATUS range after range. Data connections keep simple
replies, so reads never pay for it.
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
from vsphere_replicator.extents import Extent, merge_extents
from vsphere_replicator.transport.base import BlockDevice, check_range

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_EXPORT_NAME = 1
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_SET_META_CONTEXT = 10
REP_ACK = 1
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_BLOCK_STATUS = 7
MAX_REQUEST = 32 << 20  # what servers accept without negotiating more
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_BLOCK_STATUS = 1, 5  # OFFSET_HOLE (2): zeros
REPLY_TYPE_ERROR_BIT = 1 << 15
BASE_ALLOCATION = "base:allocation"
STATE_HOLE, STATE_ZERO = 1 << 0, 1 << 1  # base:allocation's flags
MAX_STATUS_REQUEST = (1 << 32) - (1 << 20)  # a request's length is 32 bits; stay aligned below it


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
    """One negotiated NBD connection. Not shared between threads.

    With `meta_context` (e.g. "base:allocation") it negotiates structured
    replies and that metadata context before the export; `context_id` is
    then the server's id for it, or None when the server does not offer it.
    """

    def __init__(
        self, endpoint: NBDEndpoint, timeout: float = 60.0, *, meta_context: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.meta_context = meta_context
        self.context_id: int | None = None
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
        if self.meta_context is not None:
            self._negotiate_meta_context(name, self.meta_context)
        payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self._send(struct.pack(">QII", IHAVEOPT, OPT_GO, len(payload)) + payload)
        size = flags = None
        while True:
            reply, data = self._option_reply(OPT_GO)
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

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        reply_magic, replied_to, reply, length = struct.unpack(">QIII", self._recv(20))
        data = self._recv(length)
        if reply_magic != REPLY_MAGIC or replied_to != option:
            raise TransportError(f"{self._where()} sent a malformed option reply")
        return reply, data

    def _negotiate_meta_context(self, name: bytes, context: str) -> None:
        """Structured replies, then `context` for export `name`; sets `context_id` if offered."""
        self._send(struct.pack(">QII", IHAVEOPT, OPT_STRUCTURED_REPLY, 0))
        reply, data = self._option_reply(OPT_STRUCTURED_REPLY)
        if reply != REP_ACK:
            raise TransportError(
                f"{self._where()} does not offer structured replies, so no block status "
                f"({data.decode(errors='replace') or reply})"
            )
        query = context.encode()
        payload = struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(query)) + query
        self._send(struct.pack(">QII", IHAVEOPT, OPT_SET_META_CONTEXT, len(payload)) + payload)
        while True:
            reply, data = self._option_reply(OPT_SET_META_CONTEXT)
            if reply == REP_META_CONTEXT and len(data) >= 4:
                (context_id,) = struct.unpack(">I", data[:4])
                if data[4:] == query:
                    self.context_id = context_id
            elif reply == REP_ACK:
                return
            elif reply & (1 << 31):
                return  # not offered: context_id stays None and block_status says so

    def _export_name(self, no_zeroes: bool) -> tuple[int, int]:
        name = self.endpoint.export.encode()
        self._send(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, len(name)) + name)
        size, flags = struct.unpack(">QH", self._recv(10))
        if not no_zeroes:
            self._recv(124)
        return size, flags

    def _replies(self, what: str, offset: int) -> Iterator[tuple[int | None, bytes]]:
        """The reply to the request just sent: (None, b"") for a simple one, else each structured chunk.

        An error, simple or structured, raises TransportError naming `what`.
        """
        while True:
            (magic,) = struct.unpack(">I", self._recv(4))
            if magic == SIMPLE_REPLY_MAGIC:
                error, handle = struct.unpack(">IQ", self._recv(12))
                if handle != self._handle:
                    raise TransportError(f"{self._where()} sent an unexpected reply")
                if error:
                    raise TransportError(f"NBD {what} at {offset} failed: errno {error}")
                yield None, b""
                return
            if magic != STRUCTURED_REPLY_MAGIC:
                raise TransportError(f"{self._where()} sent an unexpected reply")
            flags, kind, handle, size = struct.unpack(">HHQI", self._recv(16))
            payload = self._recv(size)
            if handle != self._handle:
                raise TransportError(f"{self._where()} sent an unexpected reply")
            if kind & REPLY_TYPE_ERROR_BIT:
                error, said = struct.unpack(">IH", payload[:6])
                message = payload[6 : 6 + said].decode(errors="replace")
                raise TransportError(f"NBD {what} at {offset} failed: errno {error} {message}".strip())
            yield kind, payload
            if flags & REPLY_FLAG_DONE:
                return

    def _request(self, command: int, offset: int, length: int, data: bytes = b"") -> bytes:
        self._handle += 1
        self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, command, self._handle, offset, length) + data)
        what = ("read", "write", "", "flush")[command]
        buffer = bytearray(length if command == CMD_READ else 0)  # holes read as zeros
        for kind, payload in self._replies(what, offset):
            if kind is None:
                return self._recv(length) if command == CMD_READ else b""
            if kind == REPLY_TYPE_OFFSET_DATA and command == CMD_READ:
                (at,) = struct.unpack(">Q", payload[:8])
                chunk = payload[8:]
                if at < offset or at + len(chunk) > offset + length:
                    raise TransportError(f"{self._where()} sent data outside the read at {offset}")
                buffer[at - offset : at - offset + len(chunk)] = chunk
        return bytes(buffer)

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

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(length, flags) runs from `offset` on, as the server describes them in `meta_context`.

        They cover at least some of [offset, offset + length) and may stop
        short of its end (the server chooses): callers ask again from where
        they stop. Flags for base:allocation are STATE_HOLE and STATE_ZERO.
        """
        if self.context_id is None:
            raise TransportError(
                f"the NBD server at {self._where()} does not offer block status for {self.meta_context!r}"
            )
        self._handle += 1
        length = min(length, MAX_STATUS_REQUEST)
        self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_BLOCK_STATUS, self._handle, offset, length))
        runs: list[tuple[int, int]] = []
        for kind, payload in self._replies("block status", offset):
            if kind == REPLY_TYPE_BLOCK_STATUS and struct.unpack(">I", payload[:4])[0] == self.context_id:
                runs.extend(struct.iter_unpack(">II", payload[4 : 4 + (len(payload) - 4) // 8 * 8]))
        if not runs or any(run == 0 for run, _ in runs):
            raise TransportError(f"{self._where()} answered block status at {offset} with no usable extent")
        return runs

    def allocated(self, start: int = 0, end: int | None = None) -> tuple[Extent, ...]:
        """The areas of [start, end) that may hold data: all but those base:allocation marks zero.

        A hole that does not read as zeros (STATE_HOLE alone) is kept: its
        bytes are not known to be zero.
        """
        end = self.size if end is None else min(end, self.size)
        areas = []
        cursor = start
        while cursor < end:
            for run, state in self.block_status(cursor, end - cursor):
                run = min(run, end - cursor)
                if not state & STATE_ZERO:
                    areas.append(Extent(cursor, run))
                cursor += run
                if cursor >= end:
                    break
        return merge_extents(areas)

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

    def allocated(self) -> tuple[Extent, ...]:
        """The export's allocation map from NBD block status (base:allocation), on a connection of its own.

        TransportError when the server offers no block status; a server that
        knows nothing of allocation (nbdkit over a plugin without extents)
        answers the whole export as data.
        """
        conn = NBDConnection(self._endpoint, meta_context=BASE_ALLOCATION)
        try:
            return conn.allocated()
        finally:
            conn.close()

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all = []
