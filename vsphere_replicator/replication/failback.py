"""Failback: production returns from the promoted replica to the original VM, protection restored.

Three stages, each a transaction that leaves evidence the next run reads,
under the leases of both VMs, with a RecoveryJournal (kind "failback") on
the promoted replica R naming the stage:

1. reversing — the original O (powered off) becomes R's replica: R is
   snapshotted, and only what differs is copied into O — what R wrote
   since its promotion (its CBT) plus what O wrote after the restore point
   R was brought up at; O gets a first restore point and a state naming R
   as its source. Until that state is written O is not trusted by anyone.
2. switching — a planned failover of that reverse protection: R is powered
   off, the last changes synced, O brought up (failover.py's transaction).
3. reprotecting — the same reverse step the other way: R (now off) becomes
   O's replica again, CBT-based (almost nothing to copy right after the
   switch); R's state is written, then O's reverse state cleared.

Running `failback` again after any interruption finds the stage from the
VMs' states and the journal and carries on; once done it says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from vsphere_replicator.cbt import changed_areas
from vsphere_replicator.checks import check_callable
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import ChangeIdInvalid, InvalidInput, NotFound, StateError
from vsphere_replicator.extents import Extent, merge_extents
from vsphere_replicator.inventory import DiskInfo, SnapshotInfo, VMInfo, VMSelector, get_vm, snapshot_disks
from vsphere_replicator.logs import get_logger
from vsphere_replicator.networks import NicChange
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.access import DiskAccess, HTTPDatastores
from vsphere_replicator.replication.disks import remove_point_snapshot
from vsphere_replicator.replication.failover import FailoverResult, _Failover
from vsphere_replicator.replication.lease import Lease
from vsphere_replicator.replication.options import read_options
from vsphere_replicator.replication.replica import (
    RESTORE_POINT_MARKER,
    TRANSIENT,
    Replica,
    all_replicas,
    is_restore_point,
    read_replica,
    reread,
    sweep_source,
)
from vsphere_replicator.replication.restore_points import find_restore_point
from vsphere_replicator.replication.seed import FIRST_POINT, verify_seed
from vsphere_replicator.replication.settings import ReplicaTarget
from vsphere_replicator.replication.state import (
    DiskState,
    RecoveryJournal,
    ReplicaState,
    RestorePoint,
    SourceIdentity,
)
from vsphere_replicator.replication.store import cleared_options, record_from, write_options
from vsphere_replicator.snapshots import create_snapshot, is_ours, remove_snapshot
from vsphere_replicator.transport.base import copy_areas

FAILBACK_SNAPSHOT = "failback-"


@dataclass(frozen=True, slots=True)
class _Parties:
    """The promoted replica R (its state says promoted, source O) and the original O."""

    running: Replica
    original: VMInfo


def _parties(conn: Connection, vm: str) -> _Parties | None:
    """R and O for the original named `vm`, or None when nothing is failed over to or from."""
    hits = [
        r
        for r in all_replicas(conn)
        if r.state is not None and r.state.promoted and r.state.source.name == vm
    ]
    if len(hits) > 1:
        raise InvalidInput(f"{vm} has {len(hits)} failed-over replicas: {', '.join(r.vm.name for r in hits)}")
    if not hits:
        return None
    running = hits[0]
    assert running.state is not None
    original = get_vm(conn, VMSelector(instance_uuid=running.state.source.instance_uuid))
    return _Parties(running=running, original=original)


def failback(
    conn: Connection,
    vm: str,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    switch: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> FailoverResult | None:
    """Bring production back to the original VM named `vm` and protect it again in its first direction.

    The original must be powered off. `replica_access` writes the disks of
    whichever VM is being written (the original, then the replica);
    `source_access` reads the running one's. With `switch=False` only the
    first stage runs (the original becomes a replica of the running VM) and
    None is returned. Running it again after an interruption carries on.
    `on_progress(done, total)` follows the bytes of each copy: each disk of
    the reverse copy, then each sync of the switch.
    """
    check_callable(on_progress, "on_progress", optional=True)
    parties = _parties(conn, vm)
    if parties is None:
        return _finished(conn, vm)
    running, original = parties.running, parties.original
    with (
        Lease(conn, running.vm.moref, operation="failback", vm=running.vm.name) as running_lease,
        Lease(conn, original.moref, operation="failback", vm=original.name) as original_lease,
    ):
        run = _Failback(conn, reread(conn, running), original, running_lease, original_lease, on_progress)
        return run.execute(replica_access, source_access, switch=switch)


def _finished(conn: Connection, vm: str) -> FailoverResult:
    """No failed-over replica of `vm`: done already (tidy the original), or nothing to fail back."""
    original = get_vm(conn, vm)
    record = record_from(read_options(conn, original.moref), original.name)
    forward = [
        r
        for r in all_replicas(conn)
        if r.state is not None
        and not r.state.promoted
        and r.state.source.instance_uuid == original.instance_uuid
    ]
    if not forward:
        raise NotFound(f"{vm} is not protected and has not failed over: there is nothing to fail back", vm=vm)
    replica = forward[0]
    assert replica.state is not None
    promoted_state = record.state is not None and record.state.promoted
    leftovers = [s for s in original.all_snapshots() if is_ours(s) and s.name.startswith(TRANSIENT)]
    if promoted_state or leftovers:
        # Stage 3 wrote the replica's state, but a crash kept it from tidying the original.
        with (
            Lease(conn, replica.vm.moref, operation="failback", vm=replica.vm.name),
            Lease(conn, original.moref, operation="failback", vm=original.name) as lease,
        ):
            if promoted_state:
                write_options(lease, extra=cleared_options())
            in_flight = (
                [replica.journal.source_snapshot]
                if replica.journal and replica.journal.source_snapshot
                else []
            )
            sweep_source(conn, get_vm(conn, VMSelector(moref=original.moref)), protected=in_flight)
    return FailoverResult(
        vm=vm,
        running=original.name,
        kind="failback",
        restore_point=replica.state.latest.id,
        nics=(),
        resumed=promoted_state or bool(leftovers),
        already_done=True,  # nothing was failed over: it runs, protected by `replica` (again, or still)
    )


class _Failback:
    def __init__(
        self,
        conn: Connection,
        running: Replica,
        original: VMInfo,
        running_lease: Lease,
        original_lease: Lease,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        assert running.state is not None
        self.conn = conn
        self.on_progress = on_progress
        self.running = running
        self.state: ReplicaState = running.state
        self.original = original
        self.running_lease = running_lease
        self.original_lease = original_lease
        self.log = get_logger(vm=original.name, replica=running.vm.name, operation="failback")

    def execute(
        self, replica_access: DiskAccess, source_access: DiskAccess | None, *, switch: bool
    ) -> FailoverResult | None:
        journal = self.running.recovery
        if journal is not None and journal.kind != "failback":
            raise StateError(
                f"a {journal.kind} failover is in progress on {self.running.vm.name}; run it again first",
                vm=self.original.name,
            )
        mine = record_from(read_options(self.conn, self.original.moref), self.original.name)
        reversed_already = (
            mine.state is not None and mine.state.source.instance_uuid == self.running.vm.instance_uuid
        )
        switched = reversed_already and mine.state is not None and mine.state.promoted
        if not switched and not reversed_already:
            if self.original.power_state != "poweredOff":
                raise InvalidInput(
                    f"{self.original.name} must be powered off before failing back to it",
                    vm=self.original.name,
                )
            if journal is None:
                journal = RecoveryJournal(kind="failback", phase="reversing", started=datetime.now(UTC))
                write_options(self.running_lease, recovery=journal)
                failpoints.point("failback-begun")
            self._reverse_into_original(journal, replica_access, source_access)
            journal = replace(journal, phase="switching", snapshot=None)
            write_options(self.running_lease, recovery=journal)
            failpoints.point("failback-reversed")
        elif journal is None:
            journal = RecoveryJournal(kind="failback", phase="switching", started=datetime.now(UTC))
        if not switch:
            self.log.warning("replication_reversed", now_source=self.running.vm.name)
            return None
        final = None
        nics: tuple[NicChange, ...] = ()
        if not switched:
            if journal.phase != "switching":
                journal = replace(journal, phase="switching")
                write_options(self.running_lease, recovery=journal)
            reverse = reread(self.conn, read_replica(self.conn, self.original))
            switch_run = _Failover(self.conn, self.original_lease, reverse, on_progress=self.on_progress)
            result = (
                switch_run.already("planned")
                if switch_run.state.promoted
                else switch_run.planned(replica_access, source_access)
            )
            final, nics = result.final_cycle, result.nics
            failpoints.point("failback-switched")
        if journal.phase != "reprotecting":
            journal = replace(journal, phase="reprotecting", snapshot=None)
            write_options(self.running_lease, recovery=journal)
        point = self._reprotect_running(journal, replica_access, source_access)
        self.log.warning("protection_restored", source=self.original.name, replica=self.running.vm.name)
        return FailoverResult(
            vm=self.original.name,
            running=self.original.name,
            kind="failback",
            restore_point=point,
            nics=nics,
            final_cycle=final,
            resumed=self.running.recovery is not None,
        )

    # -- stage 1: the original becomes the running VM's replica ----------------------

    def _reverse_into_original(
        self, journal: RecoveryJournal, replica_access: DiskAccess, source_access: DiskAccess | None
    ) -> None:
        running = get_vm(self.conn, VMSelector(moref=self.running.vm.moref))
        original = sweep_source(self.conn, self.original)  # a divergence check an earlier run left
        for snap in list(original.all_snapshots()):  # a first point an earlier run took but never recorded
            if is_restore_point(snap):
                original = remove_point_snapshot(self.conn, original, snap)
        snap = self._running_snapshot(running, journal)
        state = self.state
        promoted_at = find_restore_point(state, state.promoted_point)
        pairs = _copy_changes(
            self.conn,
            running=running,
            snapshot=snap,
            running_ids=dict(state.failback_ids),
            target=original,
            target_ids=dict(promoted_at.change_ids),
            mirrors=[(d.replica_key, d.source_key) for d in state.disks],
            reader=source_access or HTTPDatastores(self.conn, running.folder),
            writer=replica_access,
            on_progress=self.on_progress,
        )
        failpoints.point("failback-copied")
        reverse = self._first_point(
            running=running,
            snapshot=snap,
            target=get_vm(self.conn, VMSelector(moref=original.moref)),
            pairs=pairs,
            lease=self.original_lease,
            replica_target=ReplicaTarget(
                datastore=original.datastores[0],
                name="{vm}",
                networks=tuple((b, a) for a, b in state.target.networks),
            ),
            reader=source_access or HTTPDatastores(self.conn, running.folder),
            writer=replica_access,
        )
        self.log.info("original_reversed", restore_point=reverse.latest.id)
        remove_snapshot(self.conn, get_vm(self.conn, VMSelector(moref=running.moref)), snap)

    def _running_snapshot(self, running: VMInfo, journal: RecoveryJournal) -> SnapshotInfo:
        """The snapshot of the running VM the reverse copy reads (the journal's, if it survived)."""
        existing = next((s for s in running.all_snapshots() if s.moref == journal.snapshot), None)
        if existing is not None:
            return existing
        taken = create_snapshot(
            self.conn,
            running,
            f"{FAILBACK_SNAPSHOT}{uuid.uuid4().hex[:8]}",
            description=f"failback to {self.original.name}",
        ).snapshot
        write_options(self.running_lease, recovery=replace(journal, snapshot=taken.moref))
        failpoints.point("failback-snapshot-taken")
        return taken

    def _first_point(
        self,
        *,
        running: VMInfo,
        snapshot: SnapshotInfo,
        target: VMInfo,
        pairs: list[tuple[DiskInfo, DiskInfo]],
        lease: Lease,
        replica_target: ReplicaTarget,
        reader: DiskAccess,
        writer: DiskAccess,
    ) -> ReplicaState:
        """Take `target`'s first restore point and write its state as `running`'s replica."""
        point_snapshot = create_snapshot(
            self.conn,
            target,
            FIRST_POINT,
            description=f"failback restore point of {running.name}",
            marker=RESTORE_POINT_MARKER,
        ).snapshot
        failpoints.point("failback-point-taken")
        digests: tuple[tuple[int, str], ...] = ()
        if self.state.settings.verify:
            digests = verify_seed(
                self.conn,
                running,
                point_snapshot,
                pairs,
                reader,
                writer,
                at=snapshot.moref,
                replica=target.moref,
            )
        disks = tuple(DiskState.frozen(at, mirror) for at, mirror in pairs)
        state = ReplicaState(
            source=SourceIdentity(
                moref=running.moref, name=running.name, instance_uuid=running.instance_uuid or ""
            ),
            replica_uuid=target.instance_uuid or "",
            target=replica_target,
            settings=self.state.settings,
            disks=disks,
            restore_points=(
                RestorePoint(
                    id=FIRST_POINT,
                    snapshot=point_snapshot.moref,
                    created=snapshot.created,
                    quiesced=False,
                    bytes_moved=0,
                    bytes_changed=0,
                    digests=digests,
                    change_ids=tuple((d.source_key, d.change_id) for d in disks),
                ),
            ),
            next_point=2,
        )
        write_options(lease, state=state, clear_journal=True, clear_seed=True, clear_recovery=True)
        failpoints.point("failback-state-written")
        return state

    # -- stage 3: the replica protects the original again ----------------------------

    def _reprotect_running(
        self, journal: RecoveryJournal, replica_access: DiskAccess, source_access: DiskAccess | None
    ) -> str:
        """R (off) becomes O's replica again; then O's reverse state is cleared. Returns R's first point."""
        mine = record_from(read_options(self.conn, self.original.moref), self.original.name)
        if mine.state is None or not mine.state.promoted:
            raise StateError(
                f"{self.original.name} did not come up: run failback again", vm=self.original.name
            )
        reverse = mine.state  # O promoted: source R, failback ids = O's change ids at its promotion
        original = get_vm(self.conn, VMSelector(moref=self.original.moref))
        for snap in list(original.all_snapshots()):  # its reverse restore point, if the switch left it
            if is_restore_point(snap):
                original = remove_point_snapshot(self.conn, original, snap)
        replica = sweep_source(self.conn, get_vm(self.conn, VMSelector(moref=self.running.vm.moref)))
        for snap in list(replica.all_snapshots()):  # a first point an earlier run took but never recorded
            if is_restore_point(snap):
                replica = remove_point_snapshot(self.conn, replica, snap)
        if replica.power_state != "poweredOff":
            raise StateError(
                f"{replica.name} runs again: power it off and run failback again", vm=replica.name
            )
        snap = self._snapshot_of(original, journal)
        promoted_at = find_restore_point(reverse, reverse.promoted_point)
        reader = source_access or HTTPDatastores(self.conn, original.folder)
        pairs = _copy_changes(
            self.conn,
            running=original,
            snapshot=snap,
            running_ids=dict(reverse.failback_ids),
            target=replica,
            target_ids=dict(promoted_at.change_ids),
            mirrors=[(d.replica_key, d.source_key) for d in reverse.disks],
            reader=reader,
            writer=replica_access,
        )
        failpoints.point("failback-reprotect-copied")
        forward = self._first_point(
            running=original,
            snapshot=snap,
            target=get_vm(self.conn, VMSelector(moref=replica.moref)),
            pairs=pairs,
            lease=self.running_lease,
            replica_target=self.state.target,
            reader=reader,
            writer=replica_access,
        )
        write_options(self.original_lease, extra=cleared_options())
        failpoints.point("failback-original-cleared")
        remove_snapshot(self.conn, get_vm(self.conn, VMSelector(moref=original.moref)), snap)
        return forward.latest.id

    def _snapshot_of(self, vm: VMInfo, journal: RecoveryJournal) -> SnapshotInfo:
        existing = next((s for s in vm.all_snapshots() if s.moref == journal.snapshot), None)
        if existing is not None:
            return existing
        taken = create_snapshot(
            self.conn, vm, f"{FAILBACK_SNAPSHOT}{uuid.uuid4().hex[:8]}", description=f"reprotect {vm.name}"
        ).snapshot
        write_options(
            self.running_lease, recovery=replace(journal, phase="reprotecting", snapshot=taken.moref)
        )
        failpoints.point("failback-reprotect-snapshot-taken")
        return taken


def _copy_changes(
    conn: Connection,
    *,
    running: VMInfo,
    snapshot: SnapshotInfo,
    running_ids: dict[int, str],
    target: VMInfo,
    target_ids: dict[int, str],
    mirrors: list[tuple[int, int]],
    reader: DiskAccess,
    writer: DiskAccess,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[tuple[DiskInfo, DiskInfo]]:
    """Copy into `target` what differs from `running` at `snapshot`; returns (running, target) disk pairs.

    Per disk: what the running VM wrote since its change id `running_ids`
    (its promotion) plus what the target wrote since `target_ids` (the
    point the running VM was brought up at); a disk whose tracking cannot
    say is copied whole. `mirrors` pairs running disk keys with target keys.
    """
    frozen = {d.key: d for d in snapshot_disks(conn, snapshot.moref)}
    theirs = {d.key: d for d in target.disks}
    pairs = []
    for running_key, target_key in mirrors:
        at, dest = frozen[running_key], theirs[target_key]
        areas = _changes_since(conn, running, snapshot, at, running_ids.get(running_key))
        extra = (
            _divergence(conn, target, target_key, target_ids.get(target_key)) if areas is not None else None
        )
        if areas is None or extra is None:
            get_logger(vm=target.name).warning("failback_whole_disk", disk=target_key)
            areas = (Extent(0, at.capacity),)
        else:
            areas = merge_extents((*areas, *extra))
        src = reader.source(at, vm=running.moref, snapshot=snapshot.moref)
        try:
            dst = writer.sink(dest, vm=target.moref)
        except BaseException:
            src.close()
            raise
        try:
            copy_areas(src, dst, areas, on_progress=on_progress)
        finally:
            src.close()
            dst.close()
        pairs.append((at, dest))
    return pairs


def _changes_since(
    conn: Connection, vm: VMInfo, snapshot: SnapshotInfo, disk: DiskInfo, change_id: str | None
) -> tuple[Extent, ...] | None:
    if change_id is None:
        return None
    try:
        return changed_areas(conn, vm, snapshot, disk.key, change_id).areas
    except ChangeIdInvalid:
        return None


def _divergence(conn: Connection, vm: VMInfo, disk: int, since: str | None) -> tuple[Extent, ...] | None:
    """Areas `vm` wrote after change id `since`; None when its CBT cannot say."""
    if since is None:
        return None
    taken = create_snapshot(
        conn, vm, f"{FAILBACK_SNAPSHOT}check-{uuid.uuid4().hex[:8]}", description="failback check"
    ).snapshot
    try:
        return changed_areas(conn, vm, taken, disk, since).areas
    except ChangeIdInvalid:
        return None
    finally:
        remove_snapshot(conn, vm, taken)
