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
from vsphere_replicator.inventory import DiskInfo, datacenter_path, datastore_datacenters, datastore_type
from vsphere_replicator.transport.base import BlockSink, BlockSource
from vsphere_replicator.transport.http import (
    OBJECT_DATASTORE_TYPES,
    USE_VDDK,
    DatastoreHTTPSource,
    flat_extent_path,
    folder_refusal,
    read_datastore_file,
)
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
        """Refuse what a mount cannot serve: a vSAN or vVol datastore, a layer that is no flat extent.

        A mounted datastore serves a layer's bytes from its `-flat.vmdk` file:
        NFS datastores (and the lab's) have them; vSAN and vVol keep disks in
        objects, and a snapshot's delta layer (a redo log) has no flat extent.
        """
        datastore = flat_extent_path(disk.file_name)[0]
        if self._conn is not None:
            kind = datastore_type(self._conn, datastore)
            if kind in OBJECT_DATASTORE_TYPES:
                raise InvalidInput(
                    f"datastore {datastore} is {kind}: its disks are objects, not files a mount can "
                    f"serve ({disk.file_name}); {USE_VDDK}"
                )
        if disk.delta_format is not None:
            raise InvalidInput(
                f"{disk.file_name} is a snapshot's delta layer ({disk.delta_format}), not a flat extent "
                f"a mount can serve; {USE_VDDK}"
            )
        path = self.path(disk)
        if not path.is_file():
            raise InvalidInput(self._missing(path, disk))
        if self._conn is not None:
            self.prove(datastore)

    @staticmethod
    def _missing(path: Path, disk: DiskInfo) -> str:
        """Why the flat extent is not there: a layer whose descriptor says it is no flat disk, or no mount."""
        descriptor = path.with_name(path.name.removesuffix("-flat.vmdk") + ".vmdk")
        try:
            with descriptor.open("rb") as handle:
                head = handle.read(4096).decode("ascii", "replace")
        except OSError:
            return f"{path} does not exist: is {disk.datastore or 'the datastore'} mounted there?"
        kind = next(
            (
                line.split("=", 1)[1].strip().strip('"')
                for line in head.splitlines()
                if line.startswith("createType")
            ),
            "unknown",
        )
        return (
            f"{disk.file_name} has no flat extent ({path.name} is missing; its descriptor's createType is "
            f"{kind}): a mount cannot serve this layer; {USE_VDDK}"
        )

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
        """Refuse, before anything changes, a disk whose datastore keeps no flat files (vSAN, vVol).

        The endpoint is vCenter's own, reachable whenever the session is; a
        snapshot's delta layer is refused when it is opened (`source`).
        """
        self._refuse(disk, delta_format=None)

    def _refuse(self, disk: DiskInfo, *, delta_format: str | None) -> None:
        kind = datastore_type(self._conn, flat_extent_path(disk.file_name)[0])
        why = folder_refusal(disk.file_name, datastore_type=kind, delta_format=delta_format)
        if why is not None:
            raise InvalidInput(why)

    def source(self, disk: DiskInfo, *, vm: str, snapshot: str | None = None) -> BlockSource:
        """The layer's flat extent over `/folder`; refused before any request when it has none."""
        self._refuse(disk, delta_format=disk.delta_format)
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


def redo_log_reader(access: DiskAccess) -> DiskAccess | None:
    """`access` when it also reads a replica's redo logs (VDDK reads any layer; /folder and mounts
    none), else None: the reader of a replica's layers when the caller named no other."""
    return access if isinstance(access, VDDKDisks) else None


def parse_mounts(text: str) -> dict[str, str]:
    """'ds1=/mnt/a,ds2=/mnt/b' (VSPHERE_REPLICATOR_MOUNTS, --mount) -> {'ds1': '/mnt/a', ...}."""
    mounts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise InvalidInput(f"a datastore mount is NAME=DIRECTORY, not {item!r}")
        mounts[name] = path
    return mounts
