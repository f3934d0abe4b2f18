"""One VM's replication options (extraConfig) read and written with optimistic concurrency.

vCenter bumps `config.changeVersion` on every change to a VM's
configuration; a `ReconfigVM_Task` whose spec carries the version read
earlier fails with `ConcurrentAccess` if anything changed in between (vSphere
API reference, VirtualMachineConfigSpec.changeVersion). Every write of our
state is such a compare-and-swap, so no writer can overwrite what another
wrote after it read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyVmomi import vim, vmodl

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import ConcurrentChange, NotFound, TaskFailed
from vsphere_replicator.inventory import vm_object
from vsphere_replicator.tasks import reconfigure_vm

PREFIX = "vsphere_replicator."


@dataclass(frozen=True, slots=True)
class VMOptions:
    """A VM's options under PREFIX, and the configuration version they were read at."""

    moref: str
    version: str | None
    values: Mapping[str, str]


def _read(conn: Connection, obj: object, moref: str) -> VMOptions:
    paths = ["config.extraConfig"] + (["config.changeVersion"] if isinstance(obj, vim.VirtualMachine) else [])
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=paths)],
    )
    pc = conn.content.propertyCollector
    options = vmodl.query.PropertyCollector.RetrieveOptions()
    result = conn.call("read replication options", lambda: pc.RetrievePropertiesEx([spec], options))
    if result is None or not result.objects:
        raise NotFound(f"{moref} not found")
    props = {p.name: p.val for p in result.objects[0].propSet}
    values = {
        str(o.key): str(o.value)
        for o in props.get("config.extraConfig", [])
        if str(o.key).startswith(PREFIX) and str(o.value) != ""
    }
    return VMOptions(moref=moref, version=props.get("config.changeVersion") or None, values=values)


def read_options(conn: Connection, moref: str) -> VMOptions:
    """The VM's replication options and its configuration version, in one round trip."""
    return _read(conn, vm_object(conn, moref), moref)


def read_snapshot_options(conn: Connection, snapshot_moref: str) -> VMOptions:
    """The replication options a snapshot saved (what a revert to it brings back)."""
    return _read(conn, conn.handle(vim.vm.Snapshot, snapshot_moref), snapshot_moref)


def write_options_if_unchanged(
    conn: Connection, moref: str, changes: Mapping[str, str], *, version: str | None, vm: str | None = None
) -> None:
    """Apply `changes` ("" removes a key) only if the VM is still at `version`.

    Raises ConcurrentChange when it is not: the caller reads again and decides.
    """
    if not changes:
        return
    options = [vim.option.OptionValue(key=k, value=v) for k, v in changes.items()]
    spec = vim.vm.ConfigSpec(extraConfig=options)
    if version is not None:
        spec.changeVersion = version
    try:
        reconfigure_vm(conn, moref, spec, what="record the replication state", vm=vm or moref)
    except TaskFailed as exc:
        if exc.fault == "ConcurrentAccess":
            raise ConcurrentChange(
                f"{vm or moref}: its configuration changed while we wrote to it", vm=vm, fault=exc.fault
            ) from exc
        raise
