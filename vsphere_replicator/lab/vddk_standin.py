"""A stand-in for nbdkit's VDDK plugin, run by nbdkit's Python plugin against the lab.

    nbdkit -r python /path/to/vddk_standin.py server=127.0.0.1 port=PORT \\
        user=USER password=+FILE thumbprint=AA:BB:… vm=moref=vm-42 \\
        snapshot=snapshot-7 file='[ds] vm/disk.vmdk' transports=nbdssl:nbd

Debian's nbdkit has no vddk plugin and VMware's VDDK cannot be downloaded
here, so this script takes its place. It accepts nbdkit-vddk's documented
parameters and nothing else, and enforces what VDDK enforces, against the lab:

- `server`, `user`, `password`, `thumbprint`, `vm` and `file` are required;
- `thumbprint` is the SHA-1 of the server certificate's DER, colon-separated
  hex (the certificate is pinned by it, as VDDK does, not by a CA);
- the password comes only from `password=+FILE`, a file readable by its owner
  only (mode & 0o077 == 0). `password=PASSWORD` would put it in every
  process listing and `password=-` / `password=-FD` need a terminal or an
  inherited descriptor: all three are refused with a message;
- the login succeeds, `vm=moref=` and `snapshot=` exist, the snapshot is the
  VM's, and `file` is one of the VM's disks (of that snapshot, when given);
- a snapshot's disk opens read-only only (`nbdkit -r`); a read-write open
  needs a powered-off VM and `file` its current layer;
- one request carries at most 2 MiB (`--filter=blocksize maxdata=2M` splits
  larger ones): beyond that it fails with EINVAL, as VDDK's NFC does;
- `libdir`, when given, is a directory; `transports` offers nbd or nbdssl
  (hotadd and san need a proxy VM or a SAN path the lab does not have);
  `compression`, `config`, `cookie`, `nfchostport`, `single-link` and
  `unbuffered` are accepted and ignored; `create*` is refused.

While a client has the disk open, the stand-in registers it with the lab
(`/lab/v1/disk-sessions`), which then refuses to remove, consolidate, revert
over or move that layer with FileLocked, as ESXi does while VDDK holds it.

Configuration errors end nbdkit at start (exit status 1, the message on
stderr); open errors fail the client's handshake and are logged on stderr.

It runs in nbdkit's embedded Python: the standard library only, and no
import of vsphere_replicator. The module `nbdkit` exists only in there, so
it is imported where it is used.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import ssl
import stat
import sys
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from html import escape  # xml.sax.saxutils pulls in urllib.request: 20 ms more per nbdkit

# Every import is paid by every nbdkit start (one per disk and cycle): typing's 5 ms too. mypy takes
# a module-level TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from vsphere_replicator.lab import redolog
else:
    # The chain reader sits beside this script. nbdkit loads the script by path into the system's
    # Python, where vsphere_replicator is not installed: it is imported by path too.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import redolog

API_VERSION = 2
MAX_REQUEST = 2 << 20  # VDDK's NFC refuses larger requests
KNOWN = frozenset(
    {
        "compression",
        "config",
        "cookie",
        "file",
        "libdir",
        "nfchostport",
        "password",
        "port",
        "server",
        "single-link",
        "snapshot",
        "thumbprint",
        "transports",
        "unbuffered",
        "user",
        "vm",
    }
)
REQUIRED = ("server", "user", "password", "thumbprint", "vm", "file")
TRANSPORTS = frozenset({"file", "san", "hotadd", "nbd", "nbdssl"})
COMPRESSION = frozenset({"none", "zlib", "fastlz", "skipz"})
THUMBPRINT = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){19}$")
DATASTORE_PATH = re.compile(r"^\[([^\]]+)\] (.+)\.vmdk$")
SOAP_NS = "urn:vim25"
XSI = "{http://www.w3.org/2001/XMLSchema-instance}type"

_params: dict[str, str] = {}
_sessions: set[int] = set()  # the lab's ids of the disk sessions this process holds open
_sessions_lock = threading.Lock()
_config: dict[str, Any] = {}
_link: list[_Lab] = []  # the kept-alive connection the disk sessions go over (one per process)
_link_lock = threading.Lock()


class VDDKError(Exception):
    """What VDDK would refuse; nbdkit prints it and exits (at config) or fails the open."""


class _LinkBroken(VDDKError):
    """The connection failed under a request (not the server refusing it)."""


def _set_errno(code: int) -> None:
    import nbdkit  # only inside nbdkit's embedded interpreter

    nbdkit.set_error(code)


def thread_model() -> int:
    import nbdkit

    return int(nbdkit.THREAD_MODEL_PARALLEL)


def config(key: str, value: str) -> None:
    if key.startswith("create"):
        raise VDDKError(f"vddk: {key}=: the stand-in does not create disks")
    if key not in KNOWN:
        raise VDDKError(f"vddk: unknown parameter {key!r}")
    if key in _params:
        raise VDDKError(f"vddk: {key}= given twice")
    if key == "password" and not value.startswith("+"):
        raise VDDKError(
            "vddk: password= must be password=+FILE here: a literal password shows in every process "
            "listing, and password=- / password=-FD need a terminal or an inherited descriptor"
        )
    if key == "vm" and not value.startswith("moref="):
        raise VDDKError(f"vddk: vm= must be vm=moref=ID, not {value!r}")
    _params[key] = value


def config_complete() -> None:
    missing = [k for k in REQUIRED if k not in _params]
    if missing:
        raise VDDKError("vddk: missing required parameter(s): " + ", ".join(f"{k}=" for k in missing))
    port = _params.get("port", "443")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise VDDKError(f"vddk: port= must be a TCP port, not {port!r}")
    libdir = _params.get("libdir")
    if libdir is not None and not os.path.isdir(libdir):
        raise VDDKError(f"vddk: libdir={libdir}: no such directory (the VDDK distribution)")
    modes = _params.get("transports", "nbdssl:nbd").split(":")
    unknown = [m for m in modes if m not in TRANSPORTS]
    if unknown:
        raise VDDKError(f"vddk: transports=: unknown mode(s) {', '.join(unknown)}")
    if not {"nbd", "nbdssl"} & set(modes):
        raise VDDKError(
            "vddk: none of transports=" + ":".join(modes) + " can reach the lab (it serves nbd and nbdssl)"
        )
    if _params.get("compression", "none") not in COMPRESSION:
        raise VDDKError(f"vddk: compression= is one of {', '.join(sorted(COMPRESSION))}")
    thumbprint = _params["thumbprint"]
    if not THUMBPRINT.match(thumbprint):
        raise VDDKError(f"vddk: thumbprint={thumbprint} is not a SHA-1 thumbprint (20 hex pairs, ':')")
    match = DATASTORE_PATH.match(_params["file"])
    if match is None:
        raise VDDKError(f"vddk: file={_params['file']} is not a datastore path '[ds] dir/disk.vmdk'")
    password = _read_password(_params["password"][1:])
    vm = _params["vm"].removeprefix("moref=")
    snapshot = _params.get("snapshot")
    lab = _Lab(_params["server"], int(port), thumbprint)
    try:
        lab.login(_params["user"], password)
        _check_disk(lab, vm, snapshot, _params["file"])
        directory = lab.datastore_dir(vm, match.group(1))
    except BaseException:
        lab.close()
        raise
    _link.append(lab)  # kept for the disk sessions: one TLS handshake fewer
    _config.update(
        server=_params["server"],
        port=int(port),
        thumbprint=thumbprint,
        user=_params["user"],
        password=password,
        vm=vm,
        snapshot=snapshot,
        file=_params["file"],
        descriptor=os.path.join(directory, match.group(2) + ".vmdk"),
    )
    try:
        redolog.Chain(_config["descriptor"]).close()
    except redolog.ChainError as exc:
        raise VDDKError(f"vddk: file={_params['file']}: the disk's data cannot be read: {exc}") from None


def _read_password(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise VDDKError(f"vddk: password=+{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise VDDKError(f"vddk: password=+{path} is not a regular file")
    if info.st_mode & 0o077:
        raise VDDKError(
            f"vddk: password=+{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            "make it 0600"
        )
    if info.st_uid != os.getuid():
        raise VDDKError(f"vddk: password=+{path} belongs to another user")
    with builtins.open(path, encoding="utf-8") as handle:  # `open` here is nbdkit's callback
        return handle.read().removesuffix("\n")


def _check_disk(lab: _Lab, vm: str, snapshot: str | None, file: str) -> None:
    if lab.properties("VirtualMachine", vm, ["name"]) is None:
        raise VDDKError(f"vddk: vm=moref={vm}: no such virtual machine")
    if snapshot is None:
        disks = lab.disks("VirtualMachine", vm)
        where = f"VM {vm}"
    else:
        found = lab.properties("VirtualMachineSnapshot", snapshot, ["vm"])
        if found is None:
            raise VDDKError(f"vddk: snapshot={snapshot}: no such snapshot")
        if found["vm"].text != vm:
            raise VDDKError(f"vddk: snapshot={snapshot} is not a snapshot of {vm}")
        disks = lab.disks("VirtualMachineSnapshot", snapshot)
        where = f"snapshot {snapshot} of {vm}"
    if file not in disks:
        raise VDDKError(f"vddk: file={file} is not a disk of {where} (its disks: {', '.join(disks)})")


class _Https:
    """HTTP/1.1 requests over one kept-alive TLS socket.

    The part of http.client the stand-in needs: importing http.client (its
    email header parser) costs some 30 ms, paid by every nbdkit start, and
    the engine starts one per disk and cycle. Bodies come with a
    Content-Length or chunked, as Go's server (the lab) sends them.
    """

    def __init__(self, server: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        self._host = f"{server}:{port}"
        raw = socket.create_connection((server, port), timeout=timeout)
        try:
            self.sock = context.wrap_socket(raw)
        except BaseException:
            raw.close()
            raise
        self._reader = self.sock.makefile("rb")

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers by lower-case name, body); OSError or ValueError when the exchange fails."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status = int(self._line().split(None, 2)[1])
        found: dict[str, str] = {}
        while line := self._line().strip():
            name, _, value = line.decode("latin-1").partition(":")
            found[name.strip().lower()] = value.strip()
        if found.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self._line().split(b";", 1)[0], 16):
                chunks.append(self._exactly(size))
                self._line()
            while self._line().strip():  # trailers
                pass
            return status, found, b"".join(chunks)
        return status, found, self._exactly(int(found.get("content-length", "0")))

    def _line(self) -> bytes:
        line = self._reader.readline(65537)
        if not line:
            raise ConnectionError("the server closed the connection")
        return line

    def _exactly(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) != size:
            raise ConnectionError(f"the server sent {len(data)} of {size} bytes")
        return data


class _Lab:
    """A minimal vim25 SOAP client over one TLS connection, pinned by the SHA-1 thumbprint."""

    def __init__(self, server: str, port: int, thumbprint: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # pinned by thumbprint below, as VDDK does
        try:
            self._http = _Https(server, port, context, timeout=60)
        except OSError as exc:
            raise VDDKError(f"vddk: cannot connect to {server}:{port}: {exc}") from None
        der = self._http.sock.getpeercert(binary_form=True) or b""
        seen = hashlib.sha1(der).hexdigest().upper()
        seen = ":".join(seen[i : i + 2] for i in range(0, len(seen), 2))
        if seen != thumbprint.upper():
            self.close()
            raise VDDKError(
                f"vddk: the certificate of {server}:{port} has SHA-1 thumbprint {seen}, "
                f"not thumbprint={thumbprint}"
            )
        self._cookie = ""
        self._content: dict[str, str] = {}

    def __enter__(self) -> _Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, body: str) -> tuple[ET.Element | None, str | None]:
        """(the returnval's parent element, None) or (None, the fault's type and message)."""
        envelope = (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
            f"{body}</soapenv:Body></soapenv:Envelope>"
        )
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:vim25/8.0"'}
        if self._cookie:
            headers["Cookie"] = self._cookie
        try:
            status, answered, data = self._http.request("POST", "/sdk", envelope.encode(), headers)
        except (OSError, ValueError) as exc:
            raise VDDKError(f"vddk: the server's API failed: {exc}") from None
        cookie = answered.get("set-cookie")
        if cookie:
            self._cookie = cookie.split(";", 1)[0]
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            raise VDDKError(f"vddk: the server answered HTTP {status} without SOAP") from None
        fault = root.find(".//faultstring")
        if fault is not None:
            detail = root.find(".//detail")
            kind = ""
            if detail is not None and len(detail):
                kind = detail[0].get(XSI) or _local(detail[0].tag)
            return None, f"{kind}: {fault.text or ''}".strip(": ")
        body_el = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
        return (body_el[0] if body_el is not None and len(body_el) else None), None

    def login(self, user: str, password: str) -> None:
        result, fault = self._call(
            f'<RetrieveServiceContent xmlns="{SOAP_NS}"><_this type="ServiceInstance">ServiceInstance'
            "</_this></RetrieveServiceContent>"
        )
        if result is None:
            raise VDDKError(f"vddk: the server's service content: {fault}")
        for name in ("sessionManager", "propertyCollector"):
            element = result.find(f".//{{{SOAP_NS}}}{name}")
            if element is None or not element.text:
                raise VDDKError(f"vddk: the server names no {name}")
            self._content[name] = element.text
        _, fault = self._call(
            f'<Login xmlns="{SOAP_NS}"><_this type="SessionManager">{self._content["sessionManager"]}'
            f"</_this><userName>{escape(user)}</userName><password>{escape(password)}</password></Login>"
        )
        if fault is not None:
            raise VDDKError(f"vddk: cannot log in as user={user}: {fault}")

    def properties(self, kind: str, moref: str, paths: list[str]) -> dict[str, ET.Element] | None:
        """{path: <val> element} of one object, or None when there is no such object."""
        path_set = "".join(f"<pathSet>{escape(p)}</pathSet>" for p in paths)
        result, fault = self._call(
            f'<RetrievePropertiesEx xmlns="{SOAP_NS}"><_this type="PropertyCollector">'
            f"{self._content['propertyCollector']}</_this><specSet><propSet><type>{kind}</type>{path_set}"
            f'</propSet><objectSet><obj type="{kind}">{escape(moref)}</obj></objectSet></specSet>'
            "<options/></RetrievePropertiesEx>"
        )
        if fault is not None:
            if "ManagedObjectNotFound" in fault:
                return None
            raise VDDKError(f"vddk: reading {kind} {moref}: {fault}")
        assert result is not None
        found: dict[str, ET.Element] = {}
        for prop in result.iter(f"{{{SOAP_NS}}}propSet"):
            name, val = prop.find(f"{{{SOAP_NS}}}name"), prop.find(f"{{{SOAP_NS}}}val")
            if name is not None and val is not None and name.text:
                found[name.text] = val
        return found or None

    def disks(self, kind: str, moref: str) -> list[str]:
        """The backing file names of the disks of a VM or snapshot, in device order."""
        found = self.properties(kind, moref, ["config.hardware.device"])
        if found is None:
            return []
        names = []
        for device in found["config.hardware.device"]:
            if (device.get(XSI) or "").endswith("VirtualDisk"):
                name = device.find(f"{{{SOAP_NS}}}backing/{{{SOAP_NS}}}fileName")
                if name is not None and name.text:
                    names.append(name.text)
        return names

    def datastore_dir(self, vm: str, name: str) -> str:
        """The local directory of the VM's datastore `name` (the lab's datastores are local)."""
        found = self.properties("VirtualMachine", vm, ["datastore"])
        for ref in found["datastore"] if found else []:
            summary = self.properties("Datastore", ref.text or "", ["summary.name", "summary.url"])
            if summary and summary["summary.name"].text == name:
                return summary["summary.url"].text or ""
        raise VDDKError(f"vddk: datastore {name} is not one of {vm}'s datastores")

    def disk_session(self, method: str, query: dict[str, str], user: str, password: str) -> dict[str, Any]:
        """Open (POST) or close (DELETE) the lab's record of a disk held open by this data path.

        VDDK holds a disk it opened locked on its datastore, so ESXi refuses to
        remove, consolidate or move it meanwhile (FileLocked). The lab learns
        of the open disk here: its control API, with the lab's login.
        """
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            status, _, data = self._http.request(
                method,
                "/lab/v1/disk-sessions?" + urllib.parse.urlencode(query),
                headers={"Authorization": "Basic " + token},
            )
        except (OSError, ValueError) as exc:
            raise _LinkBroken(f"vddk: the lab's disk-session endpoint failed: {exc}") from None
        if status != 200:
            raise VDDKError(f"vddk: the lab refused the disk session: HTTP {status} {data[:200]!r}")
        found: dict[str, Any] = json.loads(data)
        return found

    def power_state(self, vm: str) -> str:
        found = self.properties("VirtualMachine", vm, ["runtime.powerState"])
        return (found["runtime.powerState"].text or "") if found else ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def open(readonly: bool) -> dict[str, Any]:
    if _config["snapshot"] is not None and not readonly:
        raise VDDKError(
            f"vddk: snapshot={_config['snapshot']}: a snapshot's disk opens read-only only (run nbdkit -r)"
        )
    if not readonly:
        with _Lab(_config["server"], _config["port"], _config["thumbprint"]) as lab:
            lab.login(_config["user"], _config["password"])
            state = lab.power_state(_config["vm"])
            if state != "poweredOff":
                raise VDDKError(
                    f"vddk: vm=moref={_config['vm']} is {state}: VDDK writes only to a powered-off VM"
                )
            current = lab.disks("VirtualMachine", _config["vm"])
            if _config["file"] not in current:
                raise VDDKError(
                    f"vddk: file={_config['file']} is not the current layer of {_config['vm']} "
                    "(an older layer belongs to a snapshot and is read-only)"
                )
    chain = redolog.Chain(_config["descriptor"], writable=not readonly)
    try:
        query = {
            "vm": _config["vm"],
            "file": _config["file"],
            "readonly": str(int(readonly)),
            "pid": str(os.getpid()),
        }
        session = _disk_session("POST", query)
    except BaseException:
        chain.close()
        raise
    with _sessions_lock:
        _sessions.add(session["id"])
    return {"chain": chain, "readonly": readonly, "session": session["id"]}


def close(h: dict[str, Any]) -> None:
    h["chain"].close()
    _end_session(h["session"])


def cleanup() -> None:
    """At nbdkit's exit: a connection cut by a signal may never reach `close`."""
    with _sessions_lock:
        left = list(_sessions)
    for session in left:
        with contextlib.suppress(VDDKError):
            _end_session(session)
    with _link_lock:
        while _link:
            _link.pop().close()


def _end_session(session: int) -> None:
    with _sessions_lock:
        if session not in _sessions:
            return
        _sessions.discard(session)
    _disk_session("DELETE", {"id": str(session)})


def _disk_session(method: str, query: dict[str, str]) -> dict[str, Any]:
    """One request over the process's kept connection: a TLS handshake per open and close was a
    third of the time nbdkit took to serve. A kept connection the server has since closed fails
    at once; the request is then made once more on a fresh one."""
    with _link_lock:
        reused = bool(_link)
        if not _link:
            _link.append(_Lab(_config["server"], _config["port"], _config["thumbprint"]))
        try:
            return _link[0].disk_session(method, query, _config["user"], _config["password"])
        except _LinkBroken:
            _link.pop().close()
            if not reused:
                raise
        _link.append(_Lab(_config["server"], _config["port"], _config["thumbprint"]))
        return _link[0].disk_session(method, query, _config["user"], _config["password"])


def get_size(h: dict[str, Any]) -> int:
    size: int = h["chain"].size
    return size


def can_write(h: dict[str, Any]) -> bool:
    return not h["readonly"]


def can_flush(h: dict[str, Any]) -> bool:
    return True


def can_extents(h: dict[str, Any]) -> bool:
    return True


def extents(h: dict[str, Any], count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    """The disk's allocation, as nbdkit-vddk answers it (VixDiskLib_QueryAllocatedBlocks).

    Allocated where any layer of the chain holds data: a grain of a redo log,
    or data in the flat base (its holes, SEEK_DATA/SEEK_HOLE, and bytes past
    its end read as zeros).
    """
    import nbdkit

    unallocated = int(nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO)
    return [(at, n, 0 if held else unallocated) for at, n, held in h["chain"].allocated(offset, count)]


def _check_length(length: int) -> None:
    if length > MAX_REQUEST:
        _set_errno(errno.EINVAL)
        raise VDDKError(f"vddk: a request of {length} bytes exceeds VDDK's {MAX_REQUEST} (use blocksize)")


def pread(h: dict[str, Any], buf: bytearray, offset: int, flags: int) -> None:
    _check_length(len(buf))
    buf[:] = h["chain"].read(offset, len(buf))


def pwrite(h: dict[str, Any], buf: bytes, offset: int, flags: int) -> None:
    _check_length(len(buf))
    if h["readonly"]:
        _set_errno(errno.EROFS)
        raise VDDKError("vddk: the disk was opened read-only")
    h["chain"].write(offset, bytes(buf))


def flush(h: dict[str, Any], flags: int) -> None:
    os.fsync(h["chain"].top_fd)


__all__: list[str] = []
