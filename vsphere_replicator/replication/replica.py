"""Finding a source's replica, and keeping both free of what crashed runs left behind."""

from __future__ import annotations

from dataclasses import dataclass, replace

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import NotFound
from vsphere_replicator.inventory import SnapshotInfo, VMInfo, VMSelector, get_vm, vms_by_moref
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication.state import (
    Journal,
    ReplicaState,
    SeedRecord,
    StateError,
    find_replicas,
    write_options,
)
from vsphere_replicator.snapshots import NAME_PREFIX, is_ours, remove_snapshot

RESTORE_POINT_MARKER = "vsphere_replicator:restore-point:v1"
CYCLE_SNAPSHOT = "cycle-"
SEED_SNAPSHOT = "seed-"
TRANSIENT = tuple(NAME_PREFIX + n for n in (CYCLE_SNAPSHOT, SEED_SNAPSHOT, "cbt-stun", "failback-", "clone-"))


@dataclass(frozen=True, slots=True)
class Replica:
    """A replica VM as found, with its state (None while its seed is unfinished)."""

    vm: VMInfo
    state: ReplicaState | None
    journal: Journal | None
    seed: SeedRecord | None


def _is_replica(vm: VMInfo, state: ReplicaState | None) -> bool:
    """A VM carrying a copied state (a clone of a replica) is not the replica itself."""
    return state is None or (vm.instance_uuid or "").lower() == state.replica_uuid.lower()


def all_replicas(conn: Connection) -> tuple[Replica, ...]:
    records = find_replicas(conn)
    if not records:
        return ()
    vms = {vm.moref: vm for vm in vms_by_moref(conn, [r.moref for r in records])}
    found = []
    for r in records:
        vm = vms.get(r.moref)
        if vm is not None and _is_replica(vm, r.state):
            found.append(Replica(vm=vm, state=r.state, journal=r.journal, seed=r.seed))
    return tuple(found)


def find_replica(conn: Connection, source: VMInfo) -> Replica | None:
    """The replica of `source` (by instance UUID), or None; StateError if there are several."""
    uuid = (source.instance_uuid or "").lower()
    hits = [
        r
        for r in all_replicas(conn)
        if (r.state is not None and r.state.source.instance_uuid.lower() == uuid and not r.state.promoted)
        or (r.state is None and r.seed is not None and r.seed.source.instance_uuid.lower() == uuid)
    ]
    if len(hits) > 1:
        raise StateError(
            f"{source.name} has {len(hits)} replicas: {', '.join(r.vm.name for r in hits)}; "
            "remove the extra ones",
            vm=source.name,
        )
    return hits[0] if hits else None


def require_replica(conn: Connection, source: VMInfo) -> Replica:
    replica = find_replica(conn, source)
    if replica is None:
        uuid = (source.instance_uuid or "").lower()
        promoted = [
            r.vm.name
            for r in all_replicas(conn)
            if r.state is not None and r.state.promoted and r.state.source.instance_uuid.lower() == uuid
        ]
        if promoted:
            raise StateError(
                f"{source.name} has failed over to {promoted[0]}: fail back, or protect it again",
                vm=source.name,
            )
        raise NotFound(f"{source.name} is not protected: run protect first", vm=source.name)
    return replica


def refresh(conn: Connection, replica: Replica) -> VMInfo:
    return get_vm(conn, VMSelector(moref=replica.vm.moref))


def restore_point_name(point_id: str) -> str:
    return NAME_PREFIX + point_id


def replica_snapshot(vm: VMInfo, point_id: str) -> SnapshotInfo | None:
    name = restore_point_name(point_id)
    return next((s for s in vm.all_snapshots() if s.name == name and _is_restore_point(s)), None)


def _is_restore_point(snapshot: SnapshotInfo) -> bool:
    return snapshot.description.split(" ", 1)[0] == RESTORE_POINT_MARKER


def sweep_source(conn: Connection, source: VMInfo, *, keep: str | None = None) -> VMInfo:
    """Remove the transient snapshots (cycle, seed, stun, ...) our earlier runs left on the source.

    Only snapshots carrying our marker and one of our transient names go,
    never `keep`: a crash in the middle of any step leaves nothing behind
    for long.
    """
    log = get_logger(vm=source.name, operation="sweep")
    for snap in list(source.all_snapshots()):
        if is_ours(snap) and snap.name.startswith(TRANSIENT) and snap.moref != keep:
            log.warning("leftover_snapshot_removed", snapshot=snap.name)
            source = remove_snapshot(conn, source, snap)
    return source


def reconcile(
    conn: Connection, replica: Replica, state: ReplicaState, journal: Journal | None
) -> ReplicaState:
    """Make the recorded restore points and the replica's snapshots agree.

    A restore point whose snapshot is gone is dropped from the state; a
    restore-point snapshot the state does not know (and no cycle in flight
    claims) is what a crash during pruning left, and is removed.
    """
    log = get_logger(vm=replica.vm.name, operation="reconcile")
    vm = replica.vm
    existing = {s.moref for s in vm.all_snapshots()}
    kept = tuple(p for p in state.restore_points if p.snapshot in existing)
    if len(kept) != len(state.restore_points):
        if not kept:
            raise StateError(
                f"every restore point of {vm.name} has lost its snapshot; protect the VM again", vm=vm.name
            )
        log.warning("restore_points_lost", lost=[p.id for p in state.restore_points if p not in kept])
        state = replace(state, restore_points=kept)
        write_options(conn, vm.moref, state=state)
    known = {p.snapshot for p in state.restore_points}
    pending = restore_point_name(journal.restore_point) if journal and journal.restore_point else None
    for snap in list(vm.all_snapshots()):
        if _is_restore_point(snap) and snap.moref not in known and snap.name != pending:
            log.warning("stray_restore_point_removed", snapshot=snap.name)
            vm = remove_snapshot(conn, vm, snap)
    return state
