"""Snapshot operations, and the sweep of snapshots our own runs left behind.

Every snapshot this library creates carries MARKER as the first line of its
description (and a "vr-" name prefix for people reading the vSphere client).
The orphan sweep selects on the marker line alone — a snapshot without it is
never touched, whatever its name.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pyVmomi import vim

from vsphere_replicator.checks import check_duration, check_type
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput, NotFound, SnapshotChainTooDeep, TaskFailed
from vsphere_replicator.inventory import (
    SnapshotInfo,
    VMInfo,
    VMRef,
    VMSelector,
    find_vms,
    get_vm,
    read_inventory,
    resolve_vm,
    vm_object,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.tasks import ProgressCallback, run_task

MARKER = "vsphere_replicator:snapshot:v1"
NAME_PREFIX = "vr-"
MAX_CHAIN_DEPTH = 32
# Faults that mean "this VM cannot be quiesced now", as opposed to a broken snapshot: the two
# SnapshotFault subtypes for a failed quiesce (FilesystemQuiesceFault: I/O held off too long;
# ApplicationQuiesceFault: a pre-freeze script failed), Tools that cannot be reached
# (ToolsUnavailable: "Cannot quiesce this virtual machine because VMware Tools is not currently
# available.") and HA's datastore I/O quiesce.
QUIESCE_FAULTS = frozenset(
    {
        "ApplicationQuiesceFault",
        "FilesystemQuiesceFault",
        "ToolsUnavailable",
        "ToolsNotRunning",
        "QuiesceDatastoreIOForHAFailed",
    }
)
# Faults vSphere also reports a failed quiesce with, the message saying so ("An error occurred
# while saving the snapshot: Failed to quiesce the virtual machine.").
GENERIC_SNAPSHOT_FAULTS = frozenset({"SnapshotFault", "GenericVmConfigFault"})


def is_quiesce_failure(exc: TaskFailed) -> bool:
    """Whether a failed snapshot task failed because the guest could not be quiesced."""
    if exc.fault in QUIESCE_FAULTS:
        return True
    return exc.fault in GENERIC_SNAPSHOT_FAULTS and "quiesc" in str(exc).lower()


class QuiesceFallback(enum.Enum):
    """What to do when a quiesced snapshot cannot be had."""

    FAIL = "fail"
    CRASH_CONSISTENT = "crash-consistent"


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """The snapshot taken, and what consistency it actually got."""

    vm: str
    snapshot: SnapshotInfo
    quiesced: bool
    memory: bool
    fallback_reason: str | None = None


@dataclass(frozen=True, slots=True)
class OrphanSnapshot:
    """A snapshot of ours on a VM, and how old it is."""

    vm: str
    vm_moref: str
    snapshot: SnapshotInfo
    age: timedelta
    vm_uuid: str | None = None


def is_ours(snapshot: SnapshotInfo) -> bool:
    """True only for snapshots this library created (the marker line)."""
    return snapshot.description.split("\n", 1)[0].split(" ", 1)[0] == MARKER


def marked_description(description: str, run_id: str, marker: str = MARKER) -> str:
    created = datetime.now(UTC).isoformat(timespec="seconds")
    head = f"{marker} run={run_id} created={created}"
    return f"{head}\n{description}" if description else head


def _depth(vm: VMInfo) -> int:
    """Levels from the root to the current snapshot (0 without snapshots)."""

    def find(nodes: tuple[SnapshotInfo, ...], level: int) -> int:
        for node in nodes:
            if node.moref == vm.current_snapshot:
                return level
            found = find(node.children, level + 1)
            if found:
                return found
        return 0

    return find(vm.snapshots, 1) if vm.current_snapshot else 0


def _snapshot_handle(conn: Connection, moref: str) -> vim.vm.Snapshot:
    return conn.handle(vim.vm.Snapshot, moref)


def find_snapshot(
    vm: VMInfo, *, name: str | None = None, moref: str | None = None, id: int | None = None
) -> SnapshotInfo:
    """The one snapshot of `vm` with that name, moref or id; NotFound or InvalidInput otherwise."""
    check_type(vm, VMInfo, "vm (find_snapshot searches a VMInfo: get it with get_vm)")
    if (name, moref, id).count(None) != 2:
        raise InvalidInput("find a snapshot by exactly one of name, moref or id")
    hits = [
        s
        for s in vm.all_snapshots()
        if (name is not None and s.name == name) or s.moref == moref or s.id == id
    ]
    if not hits:
        raise NotFound(f"{vm.name} has no snapshot {name or moref or id!r}", vm=vm.name)
    if len(hits) > 1:
        raise InvalidInput(
            f"{vm.name} has {len(hits)} snapshots named {name!r}; use its moref or id", vm=vm.name
        )
    return hits[0]


def create_snapshot(
    conn: Connection,
    vm: VMRef,
    name: str,
    *,
    description: str = "",
    memory: bool = False,
    quiesce: bool = False,
    on_quiesce_failure: QuiesceFallback = QuiesceFallback.FAIL,
    run_id: str | None = None,
    marker: str = MARKER,
    on_progress: ProgressCallback | None = None,
) -> SnapshotResult:
    """Take a marked snapshot ("vr-" + name) of the VM.

    `marker` is MARKER for the transient snapshots the orphan sweep may
    remove; replica restore points carry their own, which it never matches.
    With `quiesce`, a VM that cannot be quiesced either fails the call
    (TaskFailed) or, with QuiesceFallback.CRASH_CONSISTENT, gets a
    crash-consistent snapshot and the result says so. Refuses (before
    touching vCenter) a snapshot beyond vSphere's 32-level chain.
    """
    check_type(name, str, "snapshot name")
    if not name or len(NAME_PREFIX + name) > 80:
        raise InvalidInput(f"snapshot name must be 1 to {80 - len(NAME_PREFIX)} characters, got {name!r}")
    info = resolve_vm(conn, vm)
    if _depth(info) >= MAX_CHAIN_DEPTH:
        raise SnapshotChainTooDeep(
            f"{info.name} already has a chain of {MAX_CHAIN_DEPTH} snapshots; remove some first", vm=info.name
        )
    log = get_logger(vm=info.name, operation="create_snapshot")
    text = marked_description(description, run_id or uuid.uuid4().hex[:12], marker)
    handle = vm_object(conn, info.moref)
    full_name = NAME_PREFIX + name

    def take(quiesced: bool) -> str:
        result = run_task(
            conn,
            lambda: handle.CreateSnapshot_Task(
                name=full_name, description=text, memory=memory, quiesce=quiesced
            ),
            what=f"snapshot {info.name}",
            vm=info.name,
            on_progress=on_progress,
            returns=vim.vm.Snapshot,
        )
        return str(result._moId)

    fallback_reason = None
    quiesced = quiesce
    try:
        moref = take(quiesce)
    except TaskFailed as exc:
        if not (quiesce and is_quiesce_failure(exc)):
            raise
        if on_quiesce_failure is QuiesceFallback.FAIL:
            # vSphere rolls a failed quiesced snapshot back whole: nothing of ours is left to remove.
            raise TaskFailed(
                f"{info.name} could not be quiesced ({exc.fault}) and a crash-consistent snapshot "
                f"was not allowed (quiesce 'require'): {exc}",
                task=exc.task,
                vm=info.name,
                fault=exc.fault,
            ) from exc
        fallback_reason = f"{exc.fault}: {exc}"
        log.warning("quiesce_failed_falling_back", fault=exc.fault)
        quiesced = False
        moref = take(False)
    fresh = get_vm(conn, VMSelector(moref=info.moref))
    snapshot = find_snapshot(fresh, moref=moref)
    log.info("snapshot_created", snapshot=moref, quiesced=snapshot.quiesced)
    return SnapshotResult(
        vm=info.name,
        snapshot=snapshot,
        quiesced=snapshot.quiesced and quiesced,
        memory=memory,
        fallback_reason=fallback_reason,
    )


def _on_snapshot(
    conn: Connection, vm: VMRef, snapshot: SnapshotInfo, what: str, start: Callable[[Any], Any]
) -> VMInfo:
    """Run a task on one of the VM's snapshots (checked to still be there); the VM as it was."""
    check_type(snapshot, SnapshotInfo, "snapshot")
    info = resolve_vm(conn, vm)
    find_snapshot(info, moref=snapshot.moref)
    handle = _snapshot_handle(conn, snapshot.moref)
    run_task(conn, lambda: start(handle), what=f"{what} {snapshot.name} of {info.name}", vm=info.name)
    return info


def revert_to_snapshot(
    conn: Connection, vm: VMRef, snapshot: SnapshotInfo, *, suppress_power_on: bool = False
) -> VMInfo:
    """Bring the VM back to `snapshot`; returns its new state."""
    info = _on_snapshot(
        conn, vm, snapshot, "revert to", lambda s: s.RevertToSnapshot_Task(suppressPowerOn=suppress_power_on)
    )
    return get_vm(conn, VMSelector(moref=info.moref))


def remove_snapshot(
    conn: Connection, vm: VMRef, snapshot: SnapshotInfo, *, remove_children: bool = False
) -> VMInfo:
    """Delete one snapshot (its data folds into the remaining disks), then consolidate if needed."""
    info = _on_snapshot(
        conn, vm, snapshot, "remove snapshot", lambda s: s.RemoveSnapshot_Task(removeChildren=remove_children)
    )
    consolidate_if_needed(conn, info)
    return get_vm(conn, VMSelector(moref=info.moref))


def remove_all_snapshots(conn: Connection, vm: VMRef) -> VMInfo:
    """Delete every snapshot of the VM, ours or not — an explicit, whole-VM operation."""
    info = resolve_vm(conn, vm)
    handle = vm_object(conn, info.moref)
    run_task(conn, handle.RemoveAllSnapshots_Task, what=f"remove all snapshots of {info.name}", vm=info.name)
    consolidate_if_needed(conn, info)
    return get_vm(conn, VMSelector(moref=info.moref))


def consolidate_if_needed(conn: Connection, vm: VMRef) -> bool:
    """Consolidate the VM's disks when vCenter says it is needed; True if it did."""
    info = resolve_vm(conn, vm)
    if not info.consolidation_needed:
        return False
    handle = vm_object(conn, info.moref)
    run_task(conn, handle.ConsolidateVMDisks_Task, what=f"consolidate {info.name}", vm=info.name)
    get_logger(vm=info.name).warning("disks_consolidated")
    return True


def find_orphans(
    conn: Connection, *, older_than: timedelta, selector: VMSelector | None = None
) -> tuple[OrphanSnapshot, ...]:
    """Our snapshots older than `older_than`, on every VM (or those `selector` picks)."""
    check_duration(older_than, "older_than", zero=True)
    check_type(selector, VMSelector, "selector", optional=True)
    vms = find_vms(conn, selector) if selector is not None else read_inventory(conn)
    now = datetime.now(UTC)
    found = []
    for vm in vms:
        for snap in vm.all_snapshots():
            age = now - snap.created
            if is_ours(snap) and age >= older_than:
                found.append(
                    OrphanSnapshot(
                        vm=vm.name, vm_moref=vm.moref, snapshot=snap, age=age, vm_uuid=vm.instance_uuid
                    )
                )
    return tuple(found)


def sweep_orphans(
    conn: Connection, *, older_than: timedelta, selector: VMSelector | None = None, dry_run: bool = False
) -> tuple[OrphanSnapshot, ...]:
    """Remove our snapshots older than `older_than` (never anyone else's); returns what it removed."""
    orphans = find_orphans(conn, older_than=older_than, selector=selector)
    if dry_run:
        return orphans
    for orphan in orphans:
        remove_orphan(conn, orphan)
    return orphans


def remove_orphan(conn: Connection, orphan: OrphanSnapshot) -> None:
    """Remove one snapshot a sweep found, saying so in the log (a sweep deletes nothing silently)."""
    get_logger(operation="sweep_orphans").warning(
        "orphan_snapshot_removed",
        vm=orphan.vm,
        snapshot=orphan.snapshot.name,
        age_s=int(orphan.age.total_seconds()),
    )
    remove_snapshot(conn, VMSelector(moref=orphan.vm_moref), orphan.snapshot)
