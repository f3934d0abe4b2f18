"""One disk through VMware's VDDK: a private `nbdkit vddk` per disk, read over the NBD client.

As virt-v2v and migratekit do it: nbdkit's vddk plugin is started for one
disk (`vm=moref=`, `file=`, and `snapshot=` with `-r` for reads) on a Unix
socket in a private directory, with `--exit-with-parent` (it dies with us)
and `--filter=blocksize maxdata=2M` (VDDK's NFC fails on larger requests).
The password reaches nbdkit as `password=+FILE`, a 0600 file deleted as soon
as nbdkit is serving (it reads the file at start); it is never in argv, in an
environment or in a message. The `thumbprint=` is the SHA-1 of the
certificate the session verified. Closing the device stops nbdkit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vsphere_replicator.connection import ConnectionSettings, tls_context
from vsphere_replicator.errors import InvalidInput, TransportError
from vsphere_replicator.extents import Extent
from vsphere_replicator.transport.base import BlockDevice
from vsphere_replicator.transport.nbd import NBDBlockDevice, NBDEndpoint

MAX_REQUEST = "2M"  # what VDDK's NFC accepts in one request
DEFAULT_TRANSPORTS = "nbdssl:nbd"
START_TIMEOUT = 120.0


def sha1_thumbprint(der: bytes) -> str:
    """VDDK's thumbprint of a DER certificate: SHA-1, upper-case hex pairs joined by ':'."""
    digest = hashlib.sha1(der).hexdigest().upper()  # VDDK pins SHA-1, not a choice made here
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def verified_thumbprint(settings: ConnectionSettings, timeout: float = 30.0) -> str:
    """The SHA-1 thumbprint of vCenter's certificate, verified as the session verifies it."""
    context = tls_context(settings)
    try:
        with (
            socket.create_connection((settings.host, settings.port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=settings.host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(
            f"cannot read the certificate of {settings.host}:{settings.port}: {exc}"
        ) from exc
    if not der:
        raise TransportError(f"{settings.host}:{settings.port} presented no certificate")
    return sha1_thumbprint(der)


def _without_secret(environ: Mapping[str, str], secret: str) -> dict[str, str]:
    """The environment for nbdkit: no variable that holds the password (VSPHERE_PASSWORD, say).

    Nor a Python virtual environment on PATH: nbdkit's python plugin embeds
    the system's libpython, which finds its standard library from the first
    `python3` on PATH, and a venv's (of another Python build) breaks its
    imports. A plugin written in Python runs with the system's Python.
    """
    kept = {
        name: value
        for name, value in environ.items()
        if not name.upper().endswith("PASSWORD") and not (secret and secret in value)
    }
    kept.pop("VIRTUAL_ENV", None)
    kept.pop("PYTHONHOME", None)
    if "PATH" in kept:
        kept["PATH"] = os.pathsep.join(
            d for d in kept["PATH"].split(os.pathsep) if d and not (Path(d).parent / "pyvenv.cfg").exists()
        )
    return kept


@dataclass(frozen=True, slots=True)
class VDDKServer:
    """Where VDDK connects and how nbdkit runs it. `password` never appears in repr."""

    host: str
    user: str
    password: str = field(repr=False)
    thumbprint: str
    port: int = 443
    libdir: str | None = None
    plugin: str = "vddk"
    transports: str = DEFAULT_TRANSPORTS
    nbdkit: str = "nbdkit"

    def plugin_args(self) -> list[str]:
        """A plugin name (`vddk`), a plugin path, or a Python script run by nbdkit's python plugin."""
        return ["python", self.plugin] if self.plugin.endswith(".py") else [self.plugin]


class VDDKBlockDevice(BlockDevice):
    """One disk served by a private nbdkit vddk process; `close()` stops it."""

    def __init__(
        self,
        server: VDDKServer,
        *,
        vm: str,
        file: str,
        snapshot: str | None = None,
        read_only: bool,
        connections: int = 4,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if snapshot is not None and not read_only:
            raise InvalidInput(f"the disk of snapshot {snapshot} cannot be opened for writing")
        if shutil.which(server.nbdkit) is None:
            raise InvalidInput(
                f"{server.nbdkit} is not installed: the VDDK transport runs nbdkit's vddk plugin"
            )
        self._server = server
        self._where = f"{file} of {vm}" + (f" at {snapshot}" if snapshot else "")
        self._dir = Path(tempfile.mkdtemp(prefix="vr-vddk-"))  # 0700
        self._process: subprocess.Popen[bytes] | None = None
        self._device: NBDBlockDevice | None = None
        try:
            password = self._dir / "password"
            fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(server.password)
            sock = self._dir / "nbd.sock"
            argv = [
                server.nbdkit,
                "--foreground",
                "--exit-with-parent",
                "--unix",
                str(sock),
                *(["--readonly"] if read_only else []),
                "--filter=blocksize",
                *server.plugin_args(),
                f"maxdata={MAX_REQUEST}",
                f"server={server.host}",
                f"port={server.port}",
                f"user={server.user}",
                f"password=+{password}",
                f"thumbprint={server.thumbprint}",
                f"vm=moref={vm}",
                *([f"snapshot={snapshot}"] if snapshot is not None else []),
                f"file={file}",
                *([f"libdir={server.libdir}"] if server.libdir else []),
                f"transports={server.transports}",
            ]
            log = os.open(self._dir / "nbdkit.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                self._process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    close_fds=True,
                    env=_without_secret(os.environ, server.password),
                )
            finally:
                os.close(log)
            self._wait_for(sock, start_timeout)
            password.unlink()  # nbdkit read it at start
            self._device = NBDBlockDevice(NBDEndpoint(socket_path=str(sock)), connections=connections)
        except BaseException:
            self.close()
            raise
        self.size = self._device.size
        self.read_only = self._device.read_only

    def _wait_for(self, sock: Path, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        pause = 0.005  # nbdkit serves within ~0.1-0.3 s; a look is one stat (and a connect at the end)
        while True:
            if self._process.poll() is not None:
                raise TransportError(
                    f"nbdkit vddk for {self._where} exited with status {self._process.returncode}: "
                    f"{self.errors() or 'no message'}"
                )
            if sock.exists():
                probe = socket.socket(socket.AF_UNIX)
                try:
                    probe.connect(str(sock))
                    return
                except OSError:
                    pass
                finally:
                    probe.close()
            if time.monotonic() > deadline:
                raise TransportError(f"nbdkit vddk for {self._where} did not serve within {timeout:.0f} s")
            time.sleep(pause)

    def errors(self) -> str:
        """What nbdkit said on stderr (its last lines), with the password masked."""
        try:
            text = (self._dir / "nbdkit.log").read_text(errors="replace")
        except OSError:
            return ""
        if self._server.password:
            text = text.replace(self._server.password, "***")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-6:])

    def _failed(self, exc: TransportError) -> TransportError:
        said = self.errors()
        return TransportError(f"{exc} (nbdkit: {said})" if said else str(exc))

    def _open_device(self) -> NBDBlockDevice:
        if self._device is None:
            raise TransportError(f"the VDDK export of {self._where} is closed")
        return self._device

    def read(self, offset: int, length: int) -> bytes:
        device = self._open_device()
        try:
            return device.read(offset, length)
        except TransportError as exc:
            raise self._failed(exc) from exc

    def write(self, offset: int, data: bytes) -> None:
        device = self._open_device()
        try:
            device.write(offset, data)
        except TransportError as exc:
            raise self._failed(exc) from exc

    def flush(self) -> None:
        device = self._open_device()
        try:
            device.flush()
        except TransportError as exc:
            raise self._failed(exc) from exc

    def allocated(self) -> tuple[Extent, ...]:
        """The disk's allocation map from NBD block status (see `NBDBlockDevice.allocated`)."""
        device = self._open_device()
        try:
            return device.allocated()
        except TransportError as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        """Disconnect, stop nbdkit (SIGTERM, then SIGKILL) and remove the private directory."""
        device, self._device = self._device, None
        try:
            if device is not None:
                device.close()
        finally:
            process, self._process = self._process, None
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
