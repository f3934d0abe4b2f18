"""Datastore HTTP access (`/folder/...` with Range): the lab's and powered-off VMs' path.

Reuses the SOAP session's cookie, verifies TLS exactly as the SOAP
connection does (the same context: CA file, pinned thumbprint or, only when
asked, none), keeps a small pool of kept-alive connections, and checks every
answer's range and length: a response cut short is retried, never handed on.

Retries follow the connection's one `RetryPolicy` (vsphere_replicator.retry),
as its SOAP calls do; a 401 or 403 (the session expired) renews the session
once through `Connection.renewing_once` and reads again, never in a loop.

`dcPath` is the inventory path of the datastore's datacenter ("Sites/DC0"
when the datacenter sits in folder Sites), not its name: vCenter answers 404
to a bare name then. Unless the caller names it, it is read from the
inventory (`inventory.datacenter_path`).
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
from vsphere_replicator.errors import InvalidInput, TLSVerificationFailed, TransportError
from vsphere_replicator.inventory import datacenter_path
from vsphere_replicator.logs import get_logger
from vsphere_replicator.retry import TRANSIENT
from vsphere_replicator.transport.base import BlockDevice, check_range

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# What the /folder endpoint answers to a session it no longer knows: vCenter answers 401 with a Basic
# challenge (as to any request without a valid session); 403 is renewed as well, as some releases and
# proxies in front of vCenter answer it. A 404 is a wrong dcPath or dsName, or a missing file; a 500, a
# file the host vCenter picked cannot open (locked by a running VM's host). See docs/transports.md.
_SESSION_REFUSED = (401, 403)


def flat_extent_path(file_name: str) -> tuple[str, str]:
    """'[ds] vm/vm.vmdk' -> ('ds', 'vm/vm-flat.vmdk'): the extent that holds a flat disk's bytes."""
    match = re.match(r"^\[([^\]]+)\] (.+)\.vmdk$", file_name)
    if match is None:
        raise InvalidInput(f"not a datastore path to a .vmdk: {file_name!r}")
    return match.group(1), match.group(2) + "-flat.vmdk"


# Datastore types (summary.type) whose disks are objects, not files: `/folder` has no extent to read (404).
OBJECT_DATASTORE_TYPES = ("vsan", "VVOL")
USE_VDDK = "use the VDDK transport (--transport vddk), which reads any layer on any datastore kind"


def folder_refusal(file_name: str, *, datastore_type: str, delta_format: str | None) -> str | None:
    """Why `/folder` cannot read this layer's bytes (a message naming the VDDK transport), or None.

    A vSAN or vVol datastore keeps a disk's data in objects, with no `-flat.vmdk`
    file (vCenter answers 404); a snapshot's delta layer (a redo log:
    vmfsSparse, seSparse, or a native snapshot) has no flat extent either.
    """
    if datastore_type in OBJECT_DATASTORE_TYPES:
        return (
            f"{file_name} is on a {datastore_type} datastore, whose disks are objects with no flat file: "
            f"the datastore HTTP endpoint (/folder) cannot read it; {USE_VDDK}"
        )
    if delta_format is not None:
        return (
            f"{file_name} is a snapshot's delta layer ({delta_format}), not a flat extent: "
            f"the datastore HTTP endpoint (/folder) cannot read it; {USE_VDDK}"
        )
    return None


class DatastoreHTTPSource(BlockDevice):
    """Reads one flat extent over `/folder` with Range requests (thread-safe)."""

    def __init__(
        self,
        conn: Connection,
        file_name: str,
        size: int,
        *,
        datacenter: str | None = None,
        pool_size: int = 8,
    ) -> None:
        """`datacenter`: the inventory path of the datastore's datacenter (read from vCenter when None)."""
        self.size = size
        self._conn = conn
        settings = conn.settings
        datastore, path = flat_extent_path(file_name)
        if datacenter is None:
            datacenter = datacenter_path(conn, datastore)
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

        def attempts() -> bytes:
            return policy.retrying(self._log, "range_read_retry", offset=offset)(self._get, offset, length)

        try:
            return self._conn.renewing_once(attempts, expired=_Expired)
        except _Expired as exc:
            raise TransportError(
                f"GET {self._url} answered {exc.status} again after the session was renewed: "
                "the session lacks access to the datastore, or vCenter expired it again at once"
            ) from None
        except ssl.SSLCertVerificationError as exc:  # a certificate that changed is no network hiccup
            raise TLSVerificationFailed(
                f"the datastore endpoint's certificate did not verify: {exc}"
            ) from exc
        except TRANSIENT as exc:
            raise TransportError(
                f"reading {length} bytes at {offset} failed {policy.attempts} times: {exc}"
            ) from exc

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
        if response.status in _SESSION_REFUSED:
            raise _Expired(response.status)
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
    """The datastore endpoint refused the session cookie (`status`: 401 or 403). Not transient."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the datastore endpoint answered {status}")
        self.status = status


class _ShortRead(http.client.HTTPException):
    """The answer did not hold exactly the requested range: a response cut short, so transient."""


def read_datastore_file(
    conn: Connection, datastore: str, path: str, *, datacenter: str | None = None, limit: int = 1 << 16
) -> bytes | None:
    """A small file's bytes through vCenter's `/folder` endpoint; None when the file is not there.

    Used to prove that a directory mounted here is the datastore vCenter
    means: a marker written through the mount must be read back this way.
    `datacenter` is the inventory path of the datastore's datacenter (read
    from vCenter when None). vCenter answers 404 alike to a missing file and
    to a wrong dcPath or dsName, so a None only means "not there" when those are right.
    """
    if datacenter is None:
        datacenter = datacenter_path(conn, datastore)
    params = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
    target = f"/folder/{urllib.parse.quote(path)}?{params}"
    settings = conn.settings
    log = get_logger(datastore=datastore, path=path, operation="folder_read")

    def get() -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            settings.host, settings.port, timeout=60, context=tls_context(settings)
        )
        try:
            connection.request("GET", target, headers={"Cookie": conn.session_cookie})
            response = connection.getresponse()
            body = response.read(limit + 1)
            if len(body) <= limit and response.length:  # read(n) hands back what came before the cut
                raise http.client.IncompleteRead(body, response.length)
        finally:
            connection.close()
        if response.status in _SESSION_REFUSED:
            raise _Expired(response.status)
        return response.status, body

    try:
        status, body = conn.renewing_once(
            lambda: conn.retry.retrying(log, "folder_read_retry")(get), expired=_Expired
        )
    except _Expired as exc:
        raise TransportError(
            f"GET /folder/{path} on {datastore} answered {exc.status} again after the session was renewed"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise TransportError(f"GET /folder/{path} on {datastore}: {type(exc).__name__}: {exc}") from exc
    if status == 404:
        return None
    if status != 200:
        raise TransportError(f"GET /folder/{path} on {datastore} answered {status}")
    return body[:limit]
