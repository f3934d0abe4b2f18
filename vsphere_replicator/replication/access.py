"""Where the engine reads source disks and writes replica disks.

The source side is any BlockSource over the snapshot's frozen disk (HTTP
`/folder` by default; NBD or a mounted datastore where faster). The
replica side needs writes: a datastore mounted on this machine (NFS, or the
lab's local directories), or an NBD export of the replica's disk.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import DiskInfo, datacenter_path, datastore_datacenters
from vsphere_replicator.transport.base import BlockSink, BlockSource
from vsphere_replicator.transport.http import DatastoreHTTPSource, flat_extent_path, read_datastore_file
from vsphere_replicator.transport.mounted import FileBlockSink, FileBlockSource
from vsphere_replicator.transport.nbd import NBDBlockDevice, NBDEndpoint
from vsphere_replicator.transport.vddk import (
    DEFAULT_TRANSPORTS,
    VDDKBlockDevice,
    VDDKServer,
    verified_thumbprint,
)


class DiskAccess(Protocol):
    """Opens a disk (as vCenter names its backing file) for reading or writing.

    `vm` is the moref of the VM the disk belongs to; `snapshot`, the moref of
    the snapshot whose frozen disk `disk` is (None: the VM's current layer).
    Transports that reach disks by path ignore both; VDDK needs them.
    A sink is always a VM's current layer, opened while the VM is powered
    off, and is closed before anyone snapshots that VM.
    """

    def check(self, disk: DiskInfo) -> None:
        """Raise InvalidInput when the disk cannot be reached from here (before anything changes)."""
        ...

    def source(self, disk: DiskInfo, *, vm: str, snapshot: str | None = None) -> BlockSource: ...

    def sink(self, disk: DiskInfo, *, vm: str) -> BlockSink: ...


class MountedDatastores:
    """Datastores seen as local directories: {datastore name: directory}.

    With `conn`, each mount is proven before it is trusted: a marker file
    written through the mount must be read back through vCenter's datastore
    endpoint, so a stale copy or a wrong directory is refused instead of
    silently receiving a replica's bytes. Without it, a mount is only
    checked to hold the disk's file.
    """

    def __init__(self, mounts: Mapping[str, str | Path], *, conn: Connection | None = None) -> None:
        self.mounts = {name: Path(path) for name, path in mounts.items()}
        self._conn = conn
        self._proven: set[str] = set()
        self._lock = threading.Lock()

    def path(self, disk: DiskInfo) -> Path:
        datastore, extent = flat_extent_path(disk.file_name)
        if datastore not in self.mounts:
            known = ", ".join(sorted(self.mounts)) or "none"
            raise InvalidInput(f"datastore {datastore} is not mounted here (known: {known})")
        return self.mounts[datastore] / extent

    def check(self, disk: DiskInfo) -> None:
        path = self.path(disk)
        if not path.is_file():
            raise InvalidInput(
                f"{path} does not exist: is {disk.datastore or 'the datastore'} mounted there?"
            )
        if self._conn is not None:
            self.prove(flat_extent_path(disk.file_name)[0])

    def prove(self, datastore: str) -> None:
        """Show that the directory mounted for `datastore` is that datastore (once per datastore)."""
        with self._lock:
            if datastore in self._proven or self._conn is None:
                return
            directory = self.mounts[datastore]
            name = f".vsphere-replicator-probe-{uuid.uuid4().hex}"
            token = secrets.token_hex(16).encode()
            marker = directory / name
            try:
                marker.write_bytes(token)
            except OSError as exc:
                raise InvalidInput(f"cannot write to {directory}, mounted as {datastore}: {exc}") from exc
            try:
                seen = [
                    read_datastore_file(self._conn, datastore, name, datacenter=dc)
                    for dc in datastore_datacenters(self._conn, datastore)
                ]
            finally:
                marker.unlink(missing_ok=True)
            if token not in seen:
                raise InvalidInput(
                    f"{directory} is not datastore {datastore}: a file written there is not seen through "
                    "vCenter (a stale copy, or another datastore?); fix the mount"
                )
            self._proven.add(datastore)

    def source(self, disk: DiskInfo, *, vm: str, snapshot: str | None = None) -> BlockSource:
        return FileBlockSource(self.path(disk))

    def sink(self, disk: DiskInfo, *, vm: str) -> BlockSink:
        return FileBlockSink(self.path(disk))


class NBDDisks:
    """Disks exported over NBD; `endpoint(disk)` says where each one is served.

    On ESXi that is typically nbdkit's VDDK plugin opened on the replica VM
    (`vm=moref=...`, `file=` its disk) for writes, and on the source snapshot
    (`snapshot=`) for reads; the callable starts or finds the export.
    """

    def __init__(self, endpoint: Callable[[DiskInfo], NBDEndpoint], *, connections: int = 4) -> None:
        self._endpoint = endpoint
        self._connections = connections

    def check(self, disk: DiskInfo) -> None:
        """Exports may be started on demand: nothing to check ahead."""

    def source(self, disk: DiskInfo, *, vm: str, snapshot: str | None = None) -> BlockSource:
        return NBDBlockDevice(self._endpoint(disk), connections=self._connections)

    def sink(self, disk: DiskInfo, *, vm: str) -> BlockSink:
        return NBDBlockDevice(self._endpoint(disk), connections=self._connections)


class HTTPDatastores:
    """Reads over the datastore HTTP endpoint; it cannot write into a disk in place.

    Each disk is read with `dcPath` the inventory path of its datastore's
    datacenter ("Sites/DC0" for a datacenter in folder Sites), read from the
    inventory. `datacenter` (a datacenter's name or path, or a VM's folder
    path) only chooses among datacenters holding datastores of the same name.
    """

    def __init__(self, conn: Connection, datacenter: str | None = None) -> None:
        self._conn = conn
        self._near = datacenter
        self._paths: dict[str, str] = {}
        self._lock = threading.Lock()

    def _dc_path(self, datastore: str) -> str:
        with self._lock:
            known = self._paths.get(datastore)
        if known is None:
            known = datacenter_path(self._conn, datastore, near=self._near)
            with self._lock:
                self._paths[datastore] = known
        return known

    def check(self, disk: DiskInfo) -> None:
        """The endpoint is vCenter's own: reachable whenever the session is."""

    def source(self, disk: DiskInfo, *, vm: str, snapshot: str | None = None) -> BlockSource:
        datacenter = self._dc_path(flat_extent_path(disk.file_name)[0])
        return DatastoreHTTPSource(self._conn, disk.file_name, disk.capacity, datacenter=datacenter)

    def sink(self, disk: DiskInfo, *, vm: str) -> BlockSink:
        raise InvalidInput(
            "the datastore HTTP endpoint cannot write into a disk; mount the datastore or use NBD"
        )


class VDDKDisks:
    """Disks through VMware's VDDK: one private `nbdkit vddk` per disk opened, stopped when it closes.

    Reads of a snapshot's disk open it read-only (`snapshot=`, `-r`); writes
    open the VM's current layer read-write (VDDK needs the VM powered off).
    `plugin` is nbdkit's plugin name (`vddk`) or a path (the lab's stand-in,
    a `.py` run by nbdkit's python plugin); `libdir` is VDDK's directory.
    The thumbprint is that of the certificate the session verifies.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        libdir: str | None = None,
        plugin: str = "vddk",
        transports: str = DEFAULT_TRANSPORTS,
        connections: int = 4,
    ) -> None:
        settings = conn.settings
        self._server = VDDKServer(
            host=settings.host,
            user=settings.user,
            password=settings.password,
            thumbprint=verified_thumbprint(settings),
            port=settings.port,
            libdir=libdir,
            plugin=plugin,
            transports=transports,
        )
        self._connections = connections

    def check(self, disk: DiskInfo) -> None:
        """VDDK reaches any datastore vCenter does: the path is checked when nbdkit opens it."""
        flat_extent_path(disk.file_name)  # a datastore path, or InvalidInput now

    def source(self, disk: DiskInfo, *, vm: str, snapshot: str | None = None) -> BlockSource:
        return VDDKBlockDevice(
            self._server,
            vm=vm,
            file=disk.file_name,
            snapshot=snapshot,
            read_only=True,
            connections=self._connections,
        )

    def sink(self, disk: DiskInfo, *, vm: str) -> BlockSink:
        return VDDKBlockDevice(
            self._server, vm=vm, file=disk.file_name, read_only=False, connections=self._connections
        )


def parse_mounts(text: str) -> dict[str, str]:
    """'ds1=/mnt/a,ds2=/mnt/b' (VSPHERE_REPLICATOR_MOUNTS, --mount) -> {'ds1': '/mnt/a', ...}."""
    mounts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise InvalidInput(f"a datastore mount is NAME=DIRECTORY, not {item!r}")
        mounts[name] = path
    return mounts
