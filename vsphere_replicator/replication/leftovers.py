"""Disk files in a replica's folders that nothing references: what a crash may leave behind.

A full resync adds a disk; a cycle undone or killed at the wrong moment can
leave such a disk's files on the datastore, referenced by neither the
replica's configuration nor any of its snapshots (cycles delete what they
know they made; this finds the rest). Only the folders of our replicas are
searched, through the datastore browser, and only under each replica's
lease is anything deleted.
"""

from __future__ import annotations

import functools
import posixpath
import re
from dataclasses import dataclass

from pyVmomi import vim

from vsphere_replicator.connection import Connection
from vsphere_replicator.inventory import VMInfo, VMSelector, get_vm, named_objects
from vsphere_replicator.replication.disks import referenced_files, remove_unreferenced_disks
from vsphere_replicator.replication.lease import Busy, Lease
from vsphere_replicator.replication.replica import all_replicas
from vsphere_replicator.tasks import run_task

_PATH = re.compile(r"^\[([^\]]+)\] (.*)$")
_EXTENT = ("-flat.vmdk", "-delta.vmdk", "-sesparse.vmdk", "-ctk.vmdk")


@dataclass(frozen=True, slots=True)
class LeftoverDisk:
    """A disk (descriptor) in a replica's folder that no configuration references."""

    replica: str
    file: str  # "[datastore] folder/name.vmdk"
    removed: bool = False
    kept: str | None = None  # why it was not removed (the replica was busy)


def _folders(files: set[str]) -> set[tuple[str, str]]:
    found = set()
    for name in files:
        match = _PATH.match(name)
        if match:
            found.add((match.group(1), posixpath.dirname(match.group(2))))
    return found


def _descriptors(
    conn: Connection, browsers: dict[str, vim.host.DatastoreBrowser], datastore: str, folder: str
) -> list[str]:
    browser = browsers.get(datastore)
    if browser is None:
        return []
    spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*.vmdk"])
    result = run_task(
        conn,
        lambda: browser.SearchDatastore_Task(datastorePath=f"[{datastore}] {folder}", searchSpec=spec),
        what=f"list the disks in [{datastore}] {folder}",
        returns=vim.host.DatastoreBrowser.SearchResults,
    )
    names = [f.path for f in result.file or []]
    return [f"[{datastore}] {posixpath.join(folder, n)}" for n in names if not n.endswith(_EXTENT)]


def _browsers(conn: Connection) -> dict[str, vim.host.DatastoreBrowser]:
    found: dict[str, vim.host.DatastoreBrowser] = {}
    for obj in named_objects(conn):
        if obj.kind == "Datastore":
            store = conn.handle(vim.Datastore, obj.moref)
            found[obj.name] = conn.call(
                "read a datastore browser", functools.partial(getattr, store, "browser")
            )
    return found


def _leftovers_of(conn: Connection, vm: VMInfo, browsers: dict[str, vim.host.DatastoreBrowser]) -> list[str]:
    used = referenced_files(conn, vm)
    return sorted(
        file
        for datastore, folder in _folders(used)
        for file in _descriptors(conn, browsers, datastore, folder)
        if file not in used
    )


def find_leftover_disks(conn: Connection) -> tuple[LeftoverDisk, ...]:
    """Unreferenced disks in the folders of every replica."""
    browsers = _browsers(conn)
    return tuple(
        LeftoverDisk(replica=r.vm.name, file=f)
        for r in all_replicas(conn)
        for f in _leftovers_of(conn, r.vm, browsers)
    )


def remove_leftover_disks(conn: Connection, *, dry_run: bool = False) -> tuple[LeftoverDisk, ...]:
    """Delete the unreferenced disks of every replica, each replica under its lease (busy ones skipped)."""
    browsers = _browsers(conn)
    done: list[LeftoverDisk] = []
    for replica in all_replicas(conn):
        found = _leftovers_of(conn, replica.vm, browsers)
        if not found:
            continue
        if dry_run:  # a dry run changes nothing, not even a lease
            done += [LeftoverDisk(replica.vm.name, f) for f in found]
            continue
        try:
            lease = Lease(conn, replica.vm.moref, operation="disk sweep", vm=replica.vm.name).acquire()
        except Busy as exc:
            done += [
                LeftoverDisk(replica.vm.name, f, kept=str(exc))
                for f in _leftovers_of(conn, replica.vm, browsers)
            ]
            continue
        try:
            vm = get_vm(conn, VMSelector(moref=replica.vm.moref))
            found = _leftovers_of(conn, vm, browsers)  # again, now that nobody changes it
            removed = set(remove_unreferenced_disks(conn, vm, found))  # each logged as it goes
            done += [LeftoverDisk(vm.name, f, removed=f in removed) for f in found]
        finally:
            lease.release()
    return tuple(done)
