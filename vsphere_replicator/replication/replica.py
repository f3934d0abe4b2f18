"""Finding a source's replica, and keeping both free of what crashed runs left behind."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput, NotFound, StateError
from vsphere_replicator.inventory import (
    SnapshotInfo,
    VMInfo,
    VMSelector,
    get_vm,
    snapshot_disks,
    vm_options,
    vms_by_moref,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.disks import remove_point_snapshot
from vsphere_replicator.replication.lease import Lease, LeaseHolder
from vsphere_replicator.replication.options import PREFIX, read_options, read_snapshot_options
from vsphere_replicator.replication.state import (
    POINT_ID,
    Journal,
    RecoveryJournal,
    ReplicaState,
    SeedRecord,
    point_id,
)
from vsphere_replicator.replication.store import (
    SOURCE_KEY,
    ReplicaRecord,
    find_replicas,
    is_replica_options,
    record_from,
    replica_record,
    write_options,
)
from vsphere_replicator.snapshots import NAME_PREFIX, is_ours, remove_snapshot, revert_to_snapshot

RESTORE_POINT_MARKER = "vsphere_replicator:restore-point:v1"
CYCLE_SNAPSHOT = "cycle-"
SEED_SNAPSHOT = "seed-"
TRANSIENT = tuple(NAME_PREFIX + n for n in (CYCLE_SNAPSHOT, SEED_SNAPSHOT, "cbt-stun", "failback-", "clone-"))


@dataclass(frozen=True, slots=True)
class Replica:
    """A replica VM as found, with its state (None while its seed is unfinished).

    `error` is set when its options cannot be read: then only `source_uuid`
    (when known) says whose replica it is, and nothing may act on it.
    """

    vm: VMInfo
    state: ReplicaState | None
    journal: Journal | None
    seed: SeedRecord | None
    source_uuid: str | None = None
    error: StateError | None = None
    recovery: RecoveryJournal | None = None
    holder: LeaseHolder | None = None  # who held its lease when it was read (perhaps expired)

    @classmethod
    def from_record(cls, vm: VMInfo, record: ReplicaRecord, error: StateError | None = None) -> Replica:
        """The replica `vm` with what its options hold (`error` in place of the record's, if given)."""
        return cls(
            vm=vm,
            state=record.state,
            journal=record.journal,
            seed=record.seed,
            source_uuid=record.source_uuid,
            error=error or record.error,
            recovery=record.recovery,
            holder=record.holder,
        )

    def require_readable(self) -> Replica:
        if self.error is not None:
            raise self.error
        return self


def _is_replica(vm: VMInfo, state: ReplicaState | None) -> bool:
    """A VM carrying a copied state (a clone of a replica) is not the replica itself."""
    return state is None or (vm.instance_uuid or "").lower() == state.replica_uuid.lower()


def all_replicas(conn: Connection) -> tuple[Replica, ...]:
    """Every replica, damaged ones included (with `error` set): one bad state hides no other."""
    records = find_replicas(conn)
    if not records:
        return ()
    vms = {vm.moref: vm for vm in vms_by_moref(conn, [r.moref for r in records])}
    found = []
    for r in records:
        vm = vms.get(r.moref)
        if vm is None or not _is_replica(vm, r.state):
            continue
        found.append(_replica(vm, r))
    return tuple(found)


def _source_of(replica: Replica) -> str:
    return (replica.source_uuid or "").lower()


def find_replica(conn: Connection, source: VMInfo) -> Replica | None:
    """The replica of `source` (by instance UUID), or None; StateError if there are several.

    A replica whose state is damaged is still returned (with `error` set)
    when it is known to be this source's: callers must not take it for
    "not protected" and seed a second one.

    Cost: the replica this connection found for the source before is read
    on its own (its options and details: a cycle's cost does not grow with
    the inventory). Without one, or when it is no longer the source's
    replica (removed, promoted, its state changed), every VM's options are
    read once, and only the source's candidates are decoded; that read
    remembers every replica for the next lookups.
    """
    uuid = (source.instance_uuid or "").lower()
    hinted = _hinted_replica(conn, uuid, source.name)
    if hinted is not None:
        return hinted
    hits = [r for r in _replicas_of(conn, uuid) if not (r.state is not None and r.state.promoted)]
    if len(hits) > 1:
        raise StateError(
            f"{source.name} has {len(hits)} replicas: {', '.join(r.vm.name for r in hits)}; "
            "remove the extra ones",
            vm=source.name,
        )
    if hits:
        _remember(conn, uuid, hits[0].vm.moref)
    return hits[0] if hits else None


# Per connection: a source's instance UUID (lower case) -> the moref of its replica as last found. A
# hint only: every use reads that replica again and checks it is still the source's.
_hints: weakref.WeakKeyDictionary[Connection, dict[str, str]] = weakref.WeakKeyDictionary()
_hints_lock = threading.Lock()


def _remember(conn: Connection, uuid: str, moref: str) -> None:
    if uuid:
        with _hints_lock:
            _hints.setdefault(conn, {})[uuid] = moref


def _forget(conn: Connection, uuid: str) -> None:
    with _hints_lock:
        _hints.get(conn, {}).pop(uuid, None)


def _hinted_replica(conn: Connection, uuid: str, name: str) -> Replica | None:
    """The remembered replica of the source `uuid`, read now; None (and forgotten) unless still its."""
    with _hints_lock:
        moref = _hints.get(conn, {}).get(uuid)
    if moref is None:
        return None
    try:
        options = read_options(conn, moref)
    except NotFound:
        options = None
    found = vms_by_moref(conn, [moref]) if options is not None else ()
    record = record_from(options) if options is not None and is_replica_options(options.values) else None
    if not found or record is None or not _is_replica(found[0], record.state):
        reason = "not a replica any more"
    elif (record.source_uuid or "").lower() != uuid:
        reason = "another source's replica"
    elif record.state is not None and record.state.promoted:
        reason = "failed over"
    else:
        return _replica(found[0], record)
    get_logger(vm=name).info("replica_hint_stale", replica=moref, reason=reason, fallback="scan")
    _forget(conn, uuid)
    return None


def _replica(vm: VMInfo, record: ReplicaRecord) -> Replica:
    error = record.error
    if error is not None and error.vm is None:
        error = StateError(f"{vm.name}: {error}", vm=vm.name)
    return Replica.from_record(vm, record, error)


def _replicas_of(conn: Connection, uuid: str) -> list[Replica]:
    """Every replica of the source `uuid` (promoted ones too), decoding no other replica's state.

    One read of every VM's options; each replica met is remembered for its
    own source (by the `source` option), for later lookups.
    """
    candidates = []
    for moref, options in vm_options(conn, PREFIX).items():
        values = {k: v for k, v in options.items() if v}
        if not is_replica_options(values):
            continue
        theirs = values.get(SOURCE_KEY, "").lower()
        if theirs and theirs != uuid:
            _remember(conn, theirs, moref)
            continue
        record = replica_record(moref, values)  # its source, or one recorded only in its state
        if (record.source_uuid or "").lower() == uuid:
            candidates.append(record)
    if not candidates:
        return []
    vms = {vm.moref: vm for vm in vms_by_moref(conn, [r.moref for r in candidates])}
    return [
        _replica(vms[r.moref], r) for r in candidates if r.moref in vms and _is_replica(vms[r.moref], r.state)
    ]


def require_replica(conn: Connection, source: VMInfo) -> Replica:
    replica = find_replica(conn, source)
    if replica is None:
        uuid = (source.instance_uuid or "").lower()
        promoted = [
            r.vm.name
            for r in all_replicas(conn)
            if r.state is not None and r.state.promoted and _source_of(r) == uuid
        ]
        if promoted:
            raise StateError(
                f"{source.name} has failed over to {promoted[0]}: fail back, or protect it again",
                vm=source.name,
            )
        raise NotFound(f"{source.name} is not protected: run protect first", vm=source.name)
    return replica.require_readable()


def replica_of(conn: Connection, vm: str, *, promoted: bool | None = False) -> Replica:
    """The replica of the VM named `vm`, by the name its state records (the source may be gone).

    `promoted` False: one still replicating; True: one failed over to; None: either.
    """
    if not isinstance(vm, str) or not vm:
        raise InvalidInput(f"a VM name is a non-empty string, not {vm!r}")
    replicas = all_replicas(conn)
    hits = [
        r
        for r in replicas
        if (
            r.state is not None
            and r.state.source.name == vm
            and (promoted is None or r.state.promoted == promoted)
        )
        or (r.state is None and r.seed is not None and r.seed.source.name == vm and not promoted)
    ]
    if not hits:
        broken = [r.vm.name for r in replicas if r.error is not None]
        what = "has not failed over" if promoted else "is not protected (no replica names it as its source)"
        note = f"; the state of {', '.join(broken)} cannot be read: see status" if broken else ""
        raise NotFound(f"{vm} {what}{note}", vm=vm)
    if len(hits) > 1:
        raise InvalidInput(f"{vm} has {len(hits)} replicas: {', '.join(r.vm.name for r in hits)}", vm=vm)
    return hits[0]


def reread(conn: Connection, replica: Replica) -> Replica:
    """The replica as it is now (state, journal, seed read again): after taking its lease."""
    return read_replica(conn, refresh(conn, replica))


def read_replica(conn: Connection, vm: VMInfo) -> Replica:
    """The replica `vm` with its options read now; StateError if they cannot be."""
    return Replica.from_record(vm, record_from(read_options(conn, vm.moref), vm.name)).require_readable()


def refresh(conn: Connection, replica: Replica) -> VMInfo:
    return get_vm(conn, VMSelector(moref=replica.vm.moref))


def restore_point_name(point_id: str) -> str:
    return NAME_PREFIX + point_id


def replica_snapshot(vm: VMInfo, point_id: str) -> SnapshotInfo | None:
    name = restore_point_name(point_id)
    return next((s for s in vm.all_snapshots() if s.name == name and is_restore_point(s)), None)


def is_restore_point(snapshot: SnapshotInfo) -> bool:
    return snapshot.description.split(" ", 1)[0] == RESTORE_POINT_MARKER


def revert_replica(conn: Connection, lease: Lease, vm: VMInfo, snapshot: SnapshotInfo) -> VMInfo:
    """Revert the replica (powered off) and take back the lease the revert rolled back with it."""
    with lease.exclusive():
        vm = revert_to_snapshot(conn, vm, snapshot, suppress_power_on=True)
        failpoints.point("replica-reverted")
        lease.reclaim_after_revert(snapshot.moref)
    return vm


def sweep_source(
    conn: Connection, source: VMInfo, *, keep: str | None = None, protected: Iterable[str] = ()
) -> VMInfo:
    """Remove the transient snapshots (cycle, seed, stun, ...) our earlier runs left on the source.

    Only snapshots carrying our marker and one of our transient names go,
    never `keep` nor those in `protected` (named by a journal or seed
    record): a crash in the middle of any step leaves nothing behind for
    long. Callers hold the lease of the source's replica.
    """
    spared = {keep, *protected}
    log = get_logger(vm=source.name, operation="sweep")
    for snap in list(source.all_snapshots()):
        if is_ours(snap) and snap.name.startswith(TRANSIENT) and snap.moref not in spared:
            log.warning("leftover_snapshot_removed", snapshot=snap.name)
            source = remove_snapshot(conn, source, snap)
    return source


def _number(point: str) -> int:
    match = POINT_ID.match(point)
    return int(match.group(1)) if match else -1


def _snapshot_point(snapshot: SnapshotInfo) -> str:
    return snapshot.name.removeprefix(NAME_PREFIX)


def settle_seed(conn: Connection, lease: Lease, replica: Replica) -> Replica:
    """A replica that says "seeding" but holds its first restore point gets its state back.

    That is what a revert to the first point leaves (its snapshot saved the
    seed record, taken before the state was committed), and what a protect
    killed right after taking the point leaves: either way the seed record
    rebuilds the state without the source, and newer points are adopted.
    A replica still without a first point is returned as it is.
    """
    if replica.state is not None or replica.seed is None:
        return replica
    vm = refresh(conn, replica)
    first = replica_snapshot(vm, point_id(1))
    if first is None:
        return replica
    state = replica.seed.first_state(
        vm.name, vm.instance_uuid or "", first.moref, snapshot_disks(conn, first.moref)
    )
    state = adopt_newer_points(conn, lease, vm, state, write=False)
    write_options(lease, state=state, clear_seed=True, clear_journal=True)
    get_logger(vm=vm.name, operation="reconcile").warning(
        "state_rebuilt_from_seed", points=len(state.restore_points)
    )
    return reread(conn, replica)


def adopt_newer_points(
    conn: Connection,
    lease: Lease,
    vm: VMInfo,
    state: ReplicaState,
    *,
    pending: str | None = None,
    write: bool = True,
) -> ReplicaState:
    """Commit restore-point snapshots newer than the state's newest, from the journals they saved.

    A restore-point snapshot is only ever taken once its cycle's data is
    all on the replica (journal phase "copied"), so it is a sound point
    whether or not its commit survived: a revert (failover to an older
    point, a roll back) brings back the older state the snapshot saved, and
    the newer points must then be recovered, never deleted. `pending` is
    the point the cycle in flight will commit itself.
    """
    newest = max(_number(p.id) for p in state.restore_points)
    newer = sorted(
        (
            s
            for s in vm.all_snapshots()
            if is_restore_point(s) and _number(_snapshot_point(s)) > newest and _snapshot_point(s) != pending
        ),
        key=lambda s: _number(_snapshot_point(s)),
    )
    adopted = state
    log = get_logger(vm=vm.name, operation="reconcile")
    for snap in newer:
        saved = record_from(read_snapshot_options(conn, snap.moref), vm.name)
        journal = saved.journal
        if journal is None or journal.phase != "copied" or journal.restore_point != _snapshot_point(snap):
            log.error("restore_point_not_adoptable", snapshot=snap.name, reason="its journal is not complete")
            continue
        point, disks = journal.committed_point(snap.moref, snap.created)
        adopted = adopted.with_point(point, disks)
        log.warning("restore_point_recovered", restore_point=point.id)
    if adopted is not state and write:
        write_options(lease, state=adopted)
    return adopted


def reconcile(
    conn: Connection, lease: Lease, replica: Replica, state: ReplicaState, journal: Journal | None
) -> ReplicaState:
    """Make the recorded restore points and the replica's snapshots agree.

    A restore point whose snapshot is gone is dropped from the state; a
    restore-point snapshot newer than the state's newest is recovered
    (adopt_newer_points); an older one the state does not know is what a
    crash during pruning left, and is removed.
    """
    log = get_logger(vm=replica.vm.name, operation="reconcile")
    vm = replica.vm
    pending = journal.restore_point if journal else None
    state = adopt_newer_points(conn, lease, vm, state, pending=pending)
    existing = {s.moref for s in vm.all_snapshots()}
    kept = tuple(p for p in state.restore_points if p.snapshot in existing)
    if len(kept) != len(state.restore_points):
        if not kept:
            raise StateError(
                f"every restore point of {vm.name} has lost its snapshot; protect the VM again", vm=vm.name
            )
        log.warning("restore_points_lost", lost=[p.id for p in state.restore_points if p not in kept])
        state = replace(state, restore_points=kept)
        write_options(lease, state=state)
    known = {p.snapshot for p in state.restore_points}
    newest = max(_number(p.id) for p in state.restore_points)
    for snap in list(vm.all_snapshots()):
        if (
            is_restore_point(snap)
            and snap.moref not in known
            and _snapshot_point(snap) != pending
            and _number(_snapshot_point(snap)) < newest
        ):
            log.warning("stray_restore_point_removed", snapshot=snap.name)
            vm = remove_point_snapshot(conn, vm, snap)
    return state
