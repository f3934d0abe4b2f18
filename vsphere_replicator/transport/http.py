"""Datastore HTTP access (`/folder/...` with Range): the lab's and powered-off VMs' path.

Reuses the SOAP session's cookie, verifies TLS exactly as the SOAP
connection does (the same context: CA file, pinned thumbprint or, only when
asked, none), keeps a small pool of kept-alive connections, and checks every
answer's range and length: a response cut short is retried, never handed on.
"""

from __future__ import annotations

import http.client
import queue
import re
import ssl
import threading
import time
import urllib.parse

from vsphere_replicator.connection import Connection, tls_context
from vsphere_replicator.errors import InvalidInput, TLSVerificationFailed
from vsphere_replicator.logs import get_logger
from vsphere_replicator.transport.base import BlockDevice, TransportError, check_range

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# Certificate failures are not among these: ssl.SSLCertVerificationError is handled first.
_TRANSIENT = (http.client.HTTPException, ssl.SSLError, ConnectionError, TimeoutError)


def flat_extent_path(file_name: str) -> tuple[str, str]:
    """'[ds] vm/vm.vmdk' -> ('ds', 'vm/vm-flat.vmdk'): the extent that holds a flat disk's bytes."""
    match = re.match(r"^\[([^\]]+)\] (.+)\.vmdk$", file_name)
    if match is None:
        raise InvalidInput(f"not a datastore path to a .vmdk: {file_name!r}")
    return match.group(1), match.group(2) + "-flat.vmdk"


class DatastoreHTTPSource(BlockDevice):
    """Reads one flat extent over `/folder` with Range requests (thread-safe)."""

    def __init__(
        self, conn: Connection, file_name: str, size: int, *, datacenter: str, pool_size: int = 8
    ) -> None:
        self.size = size
        self._conn = conn
        settings = conn.settings
        datastore, path = flat_extent_path(file_name)
        self._url = f"https://{settings.host}:{settings.port}/folder/{path}"
        params = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
        self._path = f"/folder/{urllib.parse.quote(path)}?{params}"
        self._log = get_logger(file=file_name, operation="http_read")
        # http.client directly: a delta is many small range requests, and per request it costs
        # about half of what urllib3 does (a quarter of requests'). No proxy, no REQUESTS_CA_BUNDLE.
        self._tls = tls_context(settings)
        self._idle: queue.LifoQueue[http.client.HTTPSConnection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.size, "the disk")
        if not length:  # a Range header cannot ask for nothing
            return b""
        policy = self._conn.retry
        renewed = False
        for attempt in range(1, policy.attempts + 1):
            generation = self._conn.session_generation
            try:
                return self._get(offset, length)
            except _Expired:
                if renewed:
                    raise TransportError(
                        f"the datastore refused the renewed session for {self._url}"
                    ) from None
                self._conn.renew_session(seen=generation)  # once, however many readers saw it expire
                renewed = True
            except ssl.SSLCertVerificationError as exc:  # a certificate that changed is no network hiccup
                raise TLSVerificationFailed(
                    f"the datastore endpoint's certificate did not verify: {exc}"
                ) from exc
            except (*_TRANSIENT, _ShortRead) as exc:
                if attempt == policy.attempts:
                    raise TransportError(
                        f"reading {length} bytes at {offset} failed {attempt} times: {exc}"
                    ) from exc
                wait = min(policy.max_wait, policy.initial_wait * 2 ** (attempt - 1))
                self._log.warning(
                    "range_read_retry", offset=offset, attempt=attempt, error=type(exc).__name__
                )
                policy.sleep(wait)
        raise TransportError(f"reading {length} bytes at {offset} did not succeed")

    def _connection(self) -> http.client.HTTPSConnection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            settings = self._conn.settings
            return http.client.HTTPSConnection(settings.host, settings.port, timeout=120, context=self._tls)

    def _get(self, offset: int, length: int) -> bytes:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", "Cookie": self._conn.session_cookie}
        started = time.monotonic()
        with self._slots:
            connection = self._connection()
            try:
                connection.request("GET", self._path, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except BaseException:
                connection.close()  # its state is unknown: never reuse it
                raise
            if response.will_close:
                connection.close()
            else:
                self._idle.put(connection)
        if response.status == 401:
            raise _Expired()
        if response.status != 206:
            raise TransportError(f"GET {self._url} answered {response.status}, expected 206")
        match = _CONTENT_RANGE.match(response.getheader("Content-Range", ""))
        if match is None or int(match.group(1)) != offset or len(body) != length:
            got = response.getheader("Content-Range")
            raise _ShortRead(f"asked {offset}+{length}, got {got} ({len(body)} bytes)")
        self._log.debug(
            "range_read", offset=offset, length=length, seconds=round(time.monotonic() - started, 4)
        )
        return body

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class _Expired(Exception):
    """The datastore endpoint refused the session cookie."""


class _ShortRead(Exception):
    """The answer did not hold exactly the requested range."""


def read_datastore_file(
    conn: Connection, datastore: str, path: str, *, datacenter: str, limit: int = 1 << 16
) -> bytes | None:
    """A small file's bytes through vCenter's `/folder` endpoint; None when the file is not there.

    Used to prove that a directory mounted here is the datastore vCenter
    means: a marker written through the mount must be read back this way.
    """
    params = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
    target = f"/folder/{urllib.parse.quote(path)}?{params}"
    settings = conn.settings
    for attempt in range(2):
        generation = conn.session_generation
        connection = http.client.HTTPSConnection(
            settings.host, settings.port, timeout=60, context=tls_context(settings)
        )
        try:
            connection.request("GET", target, headers={"Cookie": conn.session_cookie})
            response = connection.getresponse()
            body = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"GET /folder/{path} on {datastore}: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()
        if response.status in (401, 403) and attempt == 0:
            conn.renew_session(seen=generation)
            continue
        if response.status == 404:
            return None
        if response.status != 200:
            raise TransportError(f"GET /folder/{path} on {datastore} answered {response.status}")
        return body[:limit]
    raise TransportError(f"GET /folder/{path} on {datastore}: the session was refused twice")
