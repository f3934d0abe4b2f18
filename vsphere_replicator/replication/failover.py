"""Bringing a replica up: test failover, planned and unplanned failover, and failback.

- Test failover clones a restore point into an isolated, running copy; the
  replica and the source are untouched and replication carries on.
- Planned failover syncs, powers the source off, syncs the rest, and brings
  the replica up at that last restore point: nothing written is lost.
- Unplanned failover brings the replica up at a chosen restore point
  without touching the source, which may be gone.
- Failback copies what changed on the promoted replica (by its CBT since
  promotion, plus whatever the old source wrote after its last restore
  point) back into the original VM, makes the original the replica of the
  promoted one, and then fails over to it as planned.

A promoted replica sheds its restore-point snapshots (production does not
run on a snapshot chain) once it holds the chosen point's data.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace

from vsphere_replicator.cbt import changed_areas
from vsphere_replicator.clone import ClonePlacement, clone_vm, destroy_vm
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import ChangeIdInvalid, InvalidInput, NotFound
from vsphere_replicator.inventory import (
    DiskInfo,
    SnapshotInfo,
    VMInfo,
    VMSelector,
    get_vm,
    snapshot_disks,
    vm_object,
    vm_options,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.networks import NicChange, remap_nics
from vsphere_replicator.replication.access import DiskAccess, HTTPDatastores
from vsphere_replicator.replication.cycle import replicate
from vsphere_replicator.replication.replica import RESTORE_POINT_MARKER, Replica, all_replicas
from vsphere_replicator.replication.restore_points import find_restore_point
from vsphere_replicator.replication.seed import verify_seed
from vsphere_replicator.replication.settings import CycleResult, ReplicaTarget
from vsphere_replicator.replication.state import (
    PREFIX,
    DiskState,
    ReplicaState,
    RestorePoint,
    SourceIdentity,
    cleared_options,
    write_options,
)
from vsphere_replicator.snapshots import (
    create_snapshot,
    find_snapshot,
    remove_all_snapshots,
    remove_snapshot,
    revert_to_snapshot,
)
from vsphere_replicator.tasks import run_task
from vsphere_replicator.transport.base import copy_areas

TEST_KEY = PREFIX + "test_failover_of"


@dataclass(frozen=True, slots=True)
class FailoverResult:
    """Which VM now runs, at which restore point, and what it took."""

    vm: str
    running: str
    kind: str
    restore_point: str
    nics: tuple[NicChange, ...]
    final_cycle: CycleResult | None = None


def replica_of(conn: Connection, vm: str, *, promoted: bool | None = False) -> Replica:
    """The replica of the VM named `vm` (looked up by the name its state records: the source may be gone)."""
    hits = [
        r
        for r in all_replicas(conn)
        if r.state is not None
        and r.state.source.name == vm
        and (promoted is None or r.state.promoted == promoted)
    ]
    if not hits:
        what = "failed-over replica" if promoted else "replica"
        raise NotFound(f"{vm} has no {what}")
    if len(hits) > 1:
        raise InvalidInput(f"{vm} has {len(hits)} replicas: {', '.join(r.vm.name for r in hits)}")
    return hits[0]


def _point_snapshot(replica: VMInfo, snapshot_moref: str) -> SnapshotInfo:
    return find_snapshot(replica, moref=snapshot_moref)


def start_test_failover(
    conn: Connection, vm: str, *, restore_point: str | None = None, name: str = "{vm}-failover-test"
) -> FailoverResult:
    """Bring up an isolated, running copy of a restore point; replication and source are untouched.

    The copy's NICs move to the target's recovery networks; remove it with
    `cleanup_test_failover`.
    """
    replica = replica_of(conn, vm)
    assert replica.state is not None
    state = replica.state
    point = find_restore_point(state, restore_point)
    target = state.target
    placement = ClonePlacement(
        datastore=target.datastore, host=target.host, resource_pool=target.resource_pool, folder=target.folder
    )
    stamp = json.dumps({"source": state.source.instance_uuid, "restore_point": point.id})
    copy = clone_vm(
        conn,
        replica.vm,
        name.replace("{vm}", vm),
        placement,
        snapshot=_point_snapshot(replica.vm, point.snapshot),
        options={**cleared_options(), TEST_KEY: stamp},
    )
    nics = remap_nics(conn, copy.moref, dict(target.networks))
    handle = vm_object(conn, copy.moref)
    run_task(conn, handle.PowerOnVM_Task, what=f"power on {copy.name}", vm=copy.name)
    get_logger(vm=vm, operation="test_failover").info(
        "test_copy_running", copy=copy.name, restore_point=point.id
    )
    return FailoverResult(vm=vm, running=copy.name, kind="test", restore_point=point.id, nics=nics)


def cleanup_test_failover(conn: Connection, vm: str) -> tuple[str, ...]:
    """Power off and delete every test-failover copy of `vm`; returns their names."""
    replica = replica_of(conn, vm, promoted=None)
    assert replica.state is not None
    removed = []
    for moref, options in vm_options(conn, TEST_KEY).items():
        if json.loads(options[TEST_KEY]).get("source") == replica.state.source.instance_uuid:
            copy = get_vm(conn, VMSelector(moref=moref))
            destroy_vm(conn, copy)
            removed.append(copy.name)
    return tuple(removed)


def _power_off(conn: Connection, vm: VMInfo) -> None:
    if vm.power_state == "poweredOn":
        run_task(conn, vm_object(conn, vm.moref).PowerOffVM_Task, what=f"power off {vm.name}", vm=vm.name)


def _promote(
    conn: Connection, replica: Replica, state: ReplicaState, point: RestorePoint, kind: str
) -> FailoverResult:
    """Bring the replica up holding `point`: revert if needed, drop the snapshot chain, NICs, power on."""
    log = get_logger(vm=state.source.name, replica=replica.vm.name, operation="failover")
    vm = get_vm(conn, VMSelector(moref=replica.vm.moref))
    if vm.current_snapshot != point.snapshot or point != state.latest:
        vm = revert_to_snapshot(conn, vm, _point_snapshot(vm, point.snapshot), suppress_power_on=True)
    vm = remove_all_snapshots(conn, vm)
    nics = remap_nics(conn, vm.moref, dict(state.target.networks))
    vm = get_vm(conn, VMSelector(moref=vm.moref))
    ids = tuple((d.key, d.change_id) for d in vm.disks if d.change_id is not None)
    # The points after the one brought up are gone with the snapshots: history ends at it.
    kept = state.restore_points[: state.restore_points.index(point) + 1]
    promoted = replace(state, promoted=True, promoted_point=point.id, failback_ids=ids, restore_points=kept)
    # The revert brought back the options saved with the snapshot: write the whole truth again.
    write_options(conn, vm.moref, state=promoted, clear_journal=True)
    run_task(conn, vm_object(conn, vm.moref).PowerOnVM_Task, what=f"power on {vm.name}", vm=vm.name)
    log.warning("failed_over", kind=kind, restore_point=point.id)
    return FailoverResult(vm=state.source.name, running=vm.name, kind=kind, restore_point=point.id, nics=nics)


def planned_failover(
    conn: Connection, vm: str, *, replica_access: DiskAccess, source_access: DiskAccess | None = None
) -> FailoverResult:
    """Sync, power the source off, sync what is left, and bring the replica up: no write is lost."""
    source = get_vm(conn, vm)
    if source.power_state == "poweredOn":
        replicate(conn, source, replica_access=replica_access, source_access=source_access)
        _power_off(conn, source)
    final = replicate(conn, source, replica_access=replica_access, source_access=source_access)
    replica = replica_of(conn, vm)
    assert replica.state is not None
    result = _promote(conn, replica, replica.state, replica.state.latest, "planned")
    return replace(result, final_cycle=final)


def unplanned_failover(conn: Connection, vm: str, *, restore_point: str | None = None) -> FailoverResult:
    """Bring the replica up at `restore_point` (default: the latest), without touching the source."""
    replica = replica_of(conn, vm)
    assert replica.state is not None
    return _promote(
        conn, replica, replica.state, find_restore_point(replica.state, restore_point), "unplanned"
    )


def _divergence(
    conn: Connection, original: VMInfo, disk: int, since: str | None
) -> list[tuple[int, int]] | None:
    """Areas the original wrote after the restore point brought up; None when its CBT cannot say.

    `since` is the original's change id at that point (not at the newest
    point: a failover to an older one leaves the writes between them on the
    original only).
    """
    if since is None:
        return None
    taken = create_snapshot(conn, original, f"failback-{uuid.uuid4().hex[:8]}", description="failback check")
    try:
        return [(a.start, a.length) for a in changed_areas(conn, original, taken.snapshot, disk, since).areas]
    except ChangeIdInvalid:
        return None
    finally:
        remove_snapshot(conn, original, taken.snapshot)


def _union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, length in sorted(a + b):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            last_start, last_length = merged[-1]
            merged[-1] = (last_start, max(last_start + last_length, start + length) - last_start)
        else:
            merged.append((start, length))
    return merged


def failback(
    conn: Connection,
    vm: str,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    switch: bool = True,
) -> FailoverResult | None:
    """Reverse the replication from the promoted replica into the original VM, then (with `switch`) fail back.

    The original must be powered off. Only what changed is copied: the
    promoted replica's writes since promotion (its CBT) and the original's
    own writes after its last restore point; a disk whose tracking cannot
    say is copied whole. `replica_access` writes the original's disks;
    `source_access` reads the promoted replica's.
    """
    promoted = replica_of(conn, vm, promoted=True)
    assert promoted.state is not None
    state = promoted.state
    log = get_logger(vm=vm, replica=promoted.vm.name, operation="failback")
    original = get_vm(conn, VMSelector(instance_uuid=state.source.instance_uuid))
    if original.power_state != "poweredOff":
        raise InvalidInput(f"{original.name} must be powered off before failing back to it", vm=original.name)
    running = get_vm(conn, VMSelector(moref=promoted.vm.moref))
    reader = source_access or HTTPDatastores(conn, running.folder.split("/", 1)[0])
    base = dict(state.failback_ids)
    promoted_at = find_restore_point(state, state.promoted_point)
    original_ids = dict(promoted_at.change_ids)
    snap = create_snapshot(
        conn, running, f"cycle-failback-{uuid.uuid4().hex[:8]}", description=f"failback to {original.name}"
    ).snapshot
    try:
        frozen = {d.key: d for d in snapshot_disks(conn, snap.moref)}
        theirs = {d.key: d for d in original.disks}
        disks = []
        for known in state.disks:
            at, target = frozen[known.replica_key], theirs[known.source_key]
            areas = _changes_since(conn, running, snap, at, base.get(known.replica_key))
            since = original_ids.get(known.source_key)
            extra = _divergence(conn, original, known.source_key, since) if areas is not None else None
            if areas is None or extra is None:
                log.warning("failback_whole_disk", disk=known.source_key)
                areas = [(0, at.capacity)]
            else:
                areas = _union(areas, extra)
            src, dst = reader.source(at), replica_access.sink(target)
            try:
                copy_areas(src, dst, areas)
            finally:
                src.close()
                dst.close()
            disks.append(DiskState.frozen(at, known.source_key))
        point_snapshot = create_snapshot(
            conn,
            original,
            "rp-000001",
            description=f"failback restore point of {running.name}",
            marker=RESTORE_POINT_MARKER,
        ).snapshot
        digests: tuple[tuple[int, str], ...] = ()
        if state.settings.verify:
            pairs = [(frozen[k.replica_key], theirs[k.source_key]) for k in state.disks]
            digests = verify_seed(conn, running, point_snapshot, pairs, reader, replica_access)
        reverse = ReplicaState(
            source=SourceIdentity(
                moref=running.moref, name=running.name, instance_uuid=running.instance_uuid or ""
            ),
            replica_uuid=original.instance_uuid or "",
            target=ReplicaTarget(
                datastore=original.datastores[0],
                name="{vm}",
                networks=tuple((b, a) for a, b in state.target.networks),
            ),
            settings=state.settings,
            disks=tuple(disks),
            restore_points=(
                RestorePoint(
                    id="rp-000001",
                    snapshot=point_snapshot.moref,
                    created=snap.created,
                    quiesced=False,
                    bytes_moved=0,
                    bytes_changed=0,
                    digests=digests,
                    change_ids=tuple((d.source_key, d.change_id) for d in disks),
                ),
            ),
            next_point=2,
        )
        write_options(conn, original.moref, state=reverse, clear_journal=True, clear_seed=True)
        write_options(conn, running.moref, extra=cleared_options())
    finally:
        remove_snapshot(conn, running, snap)
    log.warning("replication_reversed", now_source=running.name, now_replica=original.name)
    if not switch:
        return None
    result = planned_failover(conn, running.name, replica_access=replica_access, source_access=source_access)
    # The original runs again: protect it as before, into the VM it failed back from (only what
    # changed since the switch is copied), so the next cycle is an ordinary incremental.
    failback(conn, running.name, replica_access=replica_access, source_access=source_access, switch=False)
    log.warning("protection_restored", source=original.name, replica=running.name)
    return replace(result, vm=original.name)


def _changes_since(
    conn: Connection, vm: VMInfo, snapshot: SnapshotInfo, disk: DiskInfo, change_id: str | None
) -> list[tuple[int, int]] | None:
    if change_id is None:
        return None
    try:
        return [(a.start, a.length) for a in changed_areas(conn, vm, snapshot, disk.key, change_id).areas]
    except ChangeIdInvalid:
        return None
