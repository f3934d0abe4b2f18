"""One incremental replication cycle, run as a transaction.

The cycle's steps, each recorded in the replica's journal before the next:

1. journal begun (phase "snapshot"), naming the cycle and its restore point;
2. a marked snapshot of the source, named after the cycle;
3. per disk, what to read: the changes since the recorded change id, or the
   whole disk into a fresh replica disk when the change id cannot be trusted
   (CBT reset, disk grown, added or replaced, a sampled area CBT missed);
   the replica's disks are added/retired to match, then phase "copying";
4. the bytes, flushed, with the journal checkpointed every few hundred MiB;
5. phase "copied", then a snapshot of the replica: the new restore point;
6. commit: the new state and an empty journal in one reconfigure;
7. the source snapshot removed, old restore points pruned.

A crash before 6 leaves the previous restore point the latest one; the next
run resumes from the journal (continuing a disk where its checkpoint says)
or, when the source snapshot is gone, rolls the replica back to its latest
restore point and starts over. A crash after 6 leaves only clean-up, which
the next run does first.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from vsphere_replicator.cbt import ALL_ALLOCATED, change_id_uuid, changed_areas
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import (
    ChangeIdInvalid,
    IncrementalRefused,
    ReplicatorError,
    StateError,
    VerificationFailed,
)
from vsphere_replicator.extents import Extent
from vsphere_replicator.inventory import (
    DiskInfo,
    SnapshotInfo,
    VMInfo,
    VMRef,
    resolve_vm,
    snapshot_disks,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.access import DiskAccess, HTTPDatastores, redo_log_reader
from vsphere_replicator.replication.allocation import allocated_areas
from vsphere_replicator.replication.cbt_trust import (
    CBT_LIED,
    SOURCE_REVERTED,
    lie_reason,
    reverted,
    sample_unchanged,
)
from vsphere_replicator.replication.disks import (
    disk_identity,
    remove_unreferenced_disks,
    replica_disk,
    reshape_replica,
)
from vsphere_replicator.replication.lease import Lease, LeaseLost, is_live, lease_holder
from vsphere_replicator.replication.options import read_options
from vsphere_replicator.replication.replica import (
    CYCLE_SNAPSHOT,
    RESTORE_POINT_MARKER,
    Replica,
    reconcile,
    refresh,
    replica_snapshot,
    require_replica,
    reread,
    revert_replica,
    settle_seed,
    sweep_source,
)
from vsphere_replicator.replication.retention import prune
from vsphere_replicator.replication.settings import (
    CycleResult,
    CycleSettings,
    apply_overrides,
    check_cycle_arguments,
    check_transfer,
)
from vsphere_replicator.replication.sites import Sites, sites_of
from vsphere_replicator.replication.state import (
    DiskState,
    Journal,
    JournalDisk,
    ReplicaState,
    RestorePoint,
    point_id,
)
from vsphere_replicator.replication.store import record_from, write_options
from vsphere_replicator.snapshots import (
    NAME_PREFIX,
    QuiesceFallback,
    create_snapshot,
    find_snapshot,
    remove_snapshot,
)
from vsphere_replicator.transport.base import DEFAULT_CHUNK, plan_chunks, read_chunks
from vsphere_replicator.verify import checksum

DEFAULT_CHECKPOINT = 256 << 20
WHOLE_DISK = "whole-disk"  # a JournalDisk.since that reads every byte: CBT's answers are not trusted
Progress = Callable[[int, int], None]
Throttle = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class _Plan:
    disk: JournalDisk
    areas: tuple[Extent, ...]
    changed: int


def replicate(
    conn: Connection | Sites,
    vm: VMRef,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    settings: CycleSettings | None = None,
    overrides: Mapping[str, Any] | None = None,
    verify_access: DiskAccess | None = None,
    throttle: Throttle | None = None,
    on_progress: Progress | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 4,
) -> CycleResult:
    """Run one cycle for a protected VM (resuming an interrupted one first); returns what it did.

    The cycle runs under the replica's lease (Busy when another operation
    holds it). `settings` replaces the ones recorded at protect time for
    this run, `overrides` changes some of them for this run; neither is
    recorded. `verify_access` reads the replica back for `verify` along a
    path other than the writer's (default: one vCenter's `source_access`,
    else a VDDK `replica_access` reading the point read-only, else the
    datastore HTTP endpoint).
    Raises IncrementalRefused (nothing changed) when `max_change_share` is
    exceeded. With `Sites` the source is read on its vCenter and the replica
    written on the target's.
    """
    check_transfer(chunk=chunk, checkpoint_every=checkpoint_every, workers=workers)
    check_cycle_arguments(
        settings=settings,
        replica_access=replica_access,
        source_access=source_access,
        verify_access=verify_access,
        overrides=overrides,
        throttle=throttle,
        on_progress=on_progress,
    )
    return cycle_under_lease(
        sites_of(conn),
        vm,
        replica_access=replica_access,
        source_access=source_access,
        settings=settings,
        overrides=overrides,
        verify_access=verify_access,
        throttle=throttle,
        on_progress=on_progress,
        checkpoint_every=checkpoint_every,
        chunk=chunk,
        workers=workers,
    )


def cycle_under_lease(sites: Sites, vm: VMRef, *, replica_access: DiskAccess, **options: Any) -> CycleResult:
    """Find `vm`'s replica, take its lease and run one cycle (`options` go to run_cycle): replicate's
    body, and each member's cycle of a recovery plan's."""
    source = resolve_vm(sites.source, vm)
    found = require_replica(sites.target, source)
    for disk in found.vm.disks:  # a replica datastore not mounted as said: refused before even the lease
        replica_access.check(disk)
    with Lease(sites.target, found.vm.moref, operation="replicate", vm=found.vm.name) as lease:
        replica = settle_seed(sites.target, lease, reread(sites.target, found))
        return run_cycle(sites, source, replica, lease, replica_access=replica_access, **options)


def run_cycle(
    conn: Connection | Sites,
    source: VMInfo,
    replica: Replica,
    lease: Lease,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    settings: CycleSettings | None = None,
    overrides: Mapping[str, Any] | None = None,
    verify_access: DiskAccess | None = None,
    throttle: Throttle | None = None,
    on_progress: Progress | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 4,
    within_recovery: bool = False,
    group: str | None = None,
    on_snapshot: Callable[[], None] | None = None,
) -> CycleResult:
    """One cycle of `replica`, whose lease the caller holds (replicate, planned failover).

    `group` names a consistency group's cycle (its restore point carries
    it); `on_snapshot` is called once the source snapshot is there, before
    any byte is copied: a group waits there until all its snapshots are.
    """
    started = time.monotonic()
    if replica.recovery is not None and not within_recovery:
        raise StateError(
            f"a {replica.recovery.operation} of {source.name} is in progress "
            f"(phase {replica.recovery.phase}): run it again to finish it before replicating",
            vm=source.name,
        )
    if replica.state is None:
        raise StateError(
            f"protecting {source.name} was interrupted; run protect again to finish the seed", vm=source.name
        )
    state = replica.state
    if state.promoted or replica.vm.power_state != "poweredOff":
        raise StateError(
            f"{replica.vm.name} is {'failed over' if state.promoted else replica.vm.power_state}: "
            "a running replica is not written to; protect the VM again or fail back",
            vm=source.name,
        )
    chosen = apply_overrides(settings or state.settings, overrides)
    sites = sites_of(conn)
    reader = source_access or HTTPDatastores(sites.source, source.folder.split("/", 1)[0])
    for disk in replica.vm.disks:
        replica_access.check(disk)
    for disk in source.disks:
        reader.check(disk)
    # One vCenter: the source side's access reaches the replica's disks too (VDDK reads any layer).
    # Else VDDK reads the point through an nbdkit of its own, read-only at the point's snapshot: a
    # path apart from the writer's read-write open, and the only one into a redo log.
    verifier = (
        verify_access
        or (source_access if sites.single else None)
        or redo_log_reader(replica_access)
        or HTTPDatastores(sites.target, replica.vm.folder.split("/", 1)[0])
    )
    if chosen.verify:
        for disk in replica.vm.disks:
            verifier.check(disk)  # a vSAN replica over /folder: refused now, not after the copy
    run = _Cycle(sites, source, replica, state, chosen, reader, replica_access, throttle, on_progress, lease)
    run.verifier = verifier
    run.group, run.on_snapshot = group, on_snapshot
    try:
        result = run.execute(checkpoint_every=checkpoint_every, chunk=chunk, workers=workers)
    except ReplicatorError as exc:
        _record_error(lease, replica, exc)
        raise
    return replace(result, seconds=time.monotonic() - started)


def _record_error(lease: Lease, replica: Replica, exc: ReplicatorError) -> None:
    """Keep the failure in the state for `status`; the next successful commit clears it.

    The state written is the one vCenter holds now (read again under the
    lease), never what this run had in memory: a failed commit must not
    half-commit through its own error report.
    """
    log = get_logger(vm=replica.vm.name)
    if isinstance(exc, LeaseLost):
        return  # the replica is someone else's now: write nothing
    try:
        current = record_from(read_options(lease.conn, replica.vm.moref), replica.vm.name)
        if current.state is not None:
            message = f"{type(exc).__name__}: {exc}"
            write_options(lease, state=replace(current.state, last_error=message))
    except ReplicatorError as also:  # vCenter itself may be what failed: the original error matters more
        log.warning("last_error_not_recorded", error=str(also))


class _Cycle:
    def __init__(
        self,
        sites: Sites,
        source: VMInfo,
        replica: Replica,
        state: ReplicaState,
        settings: CycleSettings,
        reader: DiskAccess,
        writer: DiskAccess,
        throttle: Throttle | None,
        on_progress: Progress | None,
        lease: Lease,
    ) -> None:
        self.conn = sites.target  # the replica's vCenter: state, journal, restore points
        self.source_conn = sites.source  # the source's: its snapshots and Changed Block Tracking
        self.lease = lease
        self.verifier: DiskAccess = writer
        self.source = source
        self.replica = replica
        self.state = state
        self.settings = settings
        self.reader = reader
        self.writer = writer
        self.throttle = throttle
        self.on_progress = on_progress
        self.log = get_logger(vm=source.name, replica=replica.vm.name, operation="replicate")
        self.group: str | None = None
        self.on_snapshot: Callable[[], None] | None = None

    # -- the steps ---------------------------------------------------------------

    def execute(self, *, checkpoint_every: int, chunk: int, workers: int) -> CycleResult:
        journal = self.replica.journal
        resumed = journal is not None
        self.state = reconcile(self.conn, self.lease, self.replica, self.state, journal)
        if journal is not None:
            self.log.warning("cycle_resumed", cycle=journal.cycle, phase=journal.phase)
            journal = self._recover(journal)
        if journal is None:
            resumed = False
            # A protect or a clone holding the source's lease is using its snapshots: leave them.
            if not source_lease_live(self.source_conn, self.source):
                self.source = sweep_source(self.source_conn, self.source)
            journal = self._begin()
        snapshot: SnapshotInfo | None
        if journal.phase == "copied":
            # Every byte is on the replica and the journal holds all the commit needs: the source
            # snapshot (for verify, then removal) may be gone without making the cycle unfinishable.
            snapshot = self._source_snapshot_if_any(journal)
            self._snapshot_taken()
        else:
            snapshot = self._source_snapshot(journal)
            self._snapshot_taken()
            if journal.phase == "snapshot":
                journal, plans = self._plan(journal, snapshot, chunk)
                if not journal.retired and all(
                    p.changed == 0 and p.disk.resync_reason is None for p in plans
                ):
                    return self._confirm(journal, snapshot, resumed)
            else:
                plans = self._replan(journal, snapshot)
            journal = self._copy(journal, plans, checkpoint_every=checkpoint_every, workers=workers)
            journal = replace(journal, phase="copied")
            write_options(self.lease, journal=journal)
            failpoints.point("copied")
        moved = sum(d.done for d in journal.disks)
        point = self._restore_point(journal, snapshot)
        self._finish(snapshot)
        self.log.info("cycle_done", restore_point=point.id, bytes_moved=moved)
        return CycleResult(
            vm=self.source.name,
            replica=self.replica.vm.name,
            restore_point=point.id,
            created=point.created,
            quiesced=point.quiesced,
            bytes_changed=point.bytes_changed,
            bytes_moved=moved,
            full_resync=tuple(d.source_key for d in journal.disks if d.resync_reason),
            resync_reasons=tuple((d.source_key, d.resync_reason) for d in journal.disks if d.resync_reason),
            resumed=resumed,
            seconds=0.0,
        )

    def _snapshot_taken(self) -> None:
        if self.on_snapshot is not None:
            self.on_snapshot()

    def _begin(self) -> Journal:
        cycle = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        journal = Journal(
            cycle=cycle,
            phase="snapshot",
            source_snapshot=None,
            started=datetime.now(UTC),
            restore_point=point_id(self.state.next_point),
            group=self.group,
        )
        write_options(self.lease, journal=journal)
        failpoints.point("journal-begun")
        return journal

    def _recover(self, journal: Journal) -> Journal | None:
        """Carry on with an interrupted cycle, or undo it; None when a new cycle must start."""
        source_gone = journal.source_snapshot is not None and not any(
            s.moref == journal.source_snapshot for s in self.source.all_snapshots()
        )
        if journal.phase == "copied":
            return journal  # every byte is on the replica: only the restore point is missing
        if source_gone:
            self.log.warning("cycle_abandoned", cycle=journal.cycle, reason="its source snapshot is gone")
            self._roll_back(written=True)
            return None
        if journal.phase == "snapshot":
            self._roll_back(written=False)  # disks may have been half added or retired: plan afresh
            write_options(self.lease, journal=journal)
        return journal

    def _roll_back(self, *, written: bool) -> None:
        """Bring the replica's working state back to its latest restore point, state intact.

        Without `written` (no byte copied yet) the revert is skipped when the
        disks are as the restore point left them.
        """
        vm = refresh(self.conn, self.replica)
        latest = find_snapshot(vm, moref=self.state.latest.snapshot)
        expected = {disk_identity(d) for d in snapshot_disks(self.conn, latest.moref)}
        if written or vm.current_snapshot != latest.moref or {disk_identity(d) for d in vm.disks} != expected:
            attached = [d.file_name for d in vm.disks]
            after = revert_replica(self.conn, self.lease, vm, latest)
            failpoints.point("rolled-back")
            # Disks a resync added are detached by the revert, their files left behind: delete them.
            remove_unreferenced_disks(self.conn, after, attached)
        # A revert also brings back the options saved with the snapshot: write ours again.
        write_options(self.lease, state=self.state, clear_journal=True)
        failpoints.point("roll-back-recorded")

    def _source_snapshot_if_any(self, journal: Journal) -> SnapshotInfo | None:
        found = next((s for s in self.source.all_snapshots() if s.moref == journal.source_snapshot), None)
        if found is None:
            self.log.warning("cycle_source_snapshot_gone", snapshot=journal.source_snapshot)
        return found

    def _source_snapshot(self, journal: Journal) -> SnapshotInfo:
        if journal.source_snapshot is not None:
            return find_snapshot(self.source, moref=journal.source_snapshot)
        name = NAME_PREFIX + CYCLE_SNAPSHOT + journal.cycle
        existing = next((s for s in self.source.all_snapshots() if s.name == name), None)
        if existing is None:
            quiesce = self.settings.quiesce != "never"
            fallback = (
                QuiesceFallback.CRASH_CONSISTENT if self.settings.quiesce == "try" else QuiesceFallback.FAIL
            )
            taken = create_snapshot(
                self.source_conn,
                self.source,
                CYCLE_SNAPSHOT + journal.cycle,
                description=f"replication cycle to {self.replica.vm.name}",
                quiesce=quiesce,
                on_quiesce_failure=fallback,
                run_id=journal.cycle,
            )
            existing = taken.snapshot
            if taken.fallback_reason:
                self.log.warning("cycle_not_quiesced", reason=taken.fallback_reason)
        failpoints.point("source-snapshot-taken")
        return existing

    def _plan(self, journal: Journal, snapshot: SnapshotInfo, chunk: int) -> tuple[Journal, list[_Plan]]:
        disks = snapshot_disks(self.source_conn, snapshot.moref)
        replica_now = refresh(self.conn, self.replica)  # its current disks, after any roll-back
        plans: list[_Plan] = []
        resyncs: list[tuple[DiskInfo, str]] = []
        for disk in disks:
            reason = self._unsafe(disk)
            if reason is None:
                plan = self._incremental(disk, snapshot, replica_now)
                if isinstance(plan, str):
                    reason = plan
                else:
                    plans.append(plan)
                    continue
            resyncs.append((disk, reason))
        self._refuse_if_too_large(plans, snapshot)
        kept_keys = {d.key for d in disks}
        retiring = tuple(
            d
            for d in self.state.disks
            if d.source_key not in kept_keys or any(r.key == d.source_key for r, _ in resyncs)
        )
        retired = tuple(d.replica_key for d in retiring)
        added = self._reshape_replica(resyncs, retiring)
        for disk, reason in resyncs:
            self.log.warning(
                "disk_full_resync",
                disk=disk.key,
                label=disk.label,
                reason=reason,
                resync_reason=SOURCE_REVERTED if reason.startswith(SOURCE_REVERTED) else None,
            )
            target = JournalDisk(
                source_key=disk.key,
                replica_key=added[disk.key].key,
                replica_uuid=added[disk.key].uuid,
                since=ALL_ALLOCATED,
                capacity=disk.capacity,
                resync_reason=reason,
                change_id=disk.change_id,
                source_uuid=disk.uuid,
                source_layer=disk.file_name,
            )
            if reason.startswith(CBT_LIED):
                target = replace(target, since=WHOLE_DISK)
            spans, total = self._areas(snapshot, target)
            plans.append(_Plan(disk=replace(target, changed=total), areas=spans, changed=total))
        plans.sort(key=lambda p: p.disk.source_key)
        journal = replace(
            journal,
            phase="copying",
            source_snapshot=snapshot.moref,
            quiesced=snapshot.quiesced,
            disks=tuple(p.disk for p in plans),
            retired=retired,
            chunk=chunk,
            source_created=snapshot.created,
        )
        write_options(self.lease, journal=journal)
        failpoints.point("planned")
        return journal, plans

    def _unsafe(self, disk: DiskInfo) -> str | None:
        """Why this disk's recorded change id cannot be used, or None when it can."""
        known = self.state.disk(disk.key)
        if known is None:
            return "disk added to the source"
        if disk.capacity != known.capacity:
            return f"disk capacity changed from {known.capacity} to {disk.capacity} bytes"
        if known.source_uuid and disk.uuid and known.source_uuid != disk.uuid:
            return "disk replaced on the source"
        if disk.change_id is None:
            return "CBT is not tracking the disk"
        if change_id_uuid(disk.change_id) != change_id_uuid(known.change_id):
            return "CBT was reset on the disk (its change id has a new identity)"
        return reverted(known, disk)

    def _incremental(self, disk: DiskInfo, snapshot: SnapshotInfo, replica_now: VMInfo) -> _Plan | str:
        known = self.state.disk(disk.key)
        assert known is not None
        try:
            changes = changed_areas(self.source_conn, self.source, snapshot, disk, known.change_id)
        except ChangeIdInvalid as exc:
            return f"vCenter rejected the recorded change id: {exc}"
        mirror = replica_disk(replica_now, known.replica_key, known.replica_uuid)
        lie = self._sample_unchanged(disk, mirror, snapshot, changes.areas)
        if lie is not None:
            return lie
        return _Plan(
            disk=JournalDisk(
                source_key=disk.key,
                replica_key=mirror.key,
                replica_uuid=mirror.uuid,
                since=known.change_id,
                capacity=disk.capacity,
                change_id=disk.change_id,
                source_uuid=disk.uuid,
                changed=changes.total,
                source_layer=disk.file_name,
            ),
            areas=changes.areas,
            changed=changes.total,
        )

    def _sample_unchanged(
        self, disk: DiskInfo, mirror: DiskInfo, snapshot: SnapshotInfo, changed: tuple[Extent, ...]
    ) -> str | None:
        """Why CBT cannot be trusted on this disk (a sampled unchanged area differs), or None."""
        differs = sample_unchanged(
            self.source_conn,
            self.source,
            snapshot,
            disk,
            changed,
            self.settings.sample_areas,
            lambda: (
                self.reader.source(disk, vm=self.source.moref, snapshot=snapshot.moref),
                self.writer.source(mirror, vm=self.replica.vm.moref),
            ),
        )
        if differs is None:
            return None
        self.log.error(
            "cbt_missed_changes",
            disk=disk.key,
            offset=differs.start,
            hint="Changed Block Tracking reported this area unchanged (see VMware KB 2090639)",
        )
        return lie_reason(differs)

    def _refuse_if_too_large(self, plans: list[_Plan], snapshot: SnapshotInfo) -> None:
        share = self.settings.max_change_share
        if share is None:
            return
        for plan in plans:
            if plan.changed > share * plan.disk.capacity:
                self.log.error("incremental_refused", disk=plan.disk.source_key, changed=plan.changed)
                write_options(self.lease, clear_journal=True)
                remove_snapshot(self.source_conn, self.source, snapshot)
                raise IncrementalRefused(
                    f"{self.source.name} disk {plan.disk.source_key}: {plan.changed} bytes changed, "
                    f"more than {share:.0%} of its {plan.disk.capacity} bytes; the cycle was not run",
                    vm=self.source.name,
                )

    def _reshape_replica(
        self, resyncs: list[tuple[DiskInfo, str]], retiring: tuple[DiskState, ...]
    ) -> dict[int, DiskInfo]:
        """A fresh replica disk per resynced source disk, retired ones detached; new disks by source key."""
        if not resyncs and not retiring:
            return {}
        return reshape_replica(
            self.conn,
            refresh(self.conn, self.replica),
            [disk for disk, _ in resyncs],
            [(d.replica_key, d.replica_uuid) for d in retiring],
            self.state.target.datastore,
        )

    def _replan(self, journal: Journal, snapshot: SnapshotInfo) -> list[_Plan]:
        """The same plan an interrupted cycle was following (CBT answers are fixed per snapshot)."""
        plans = []
        for disk in journal.disks:
            spans, total = self._areas(snapshot, disk)
            plans.append(_Plan(disk=disk, areas=spans, changed=total))
        return plans

    def _areas(self, snapshot: SnapshotInfo, disk: JournalDisk) -> tuple[tuple[Extent, ...], int]:
        if disk.since == WHOLE_DISK:
            return (Extent(0, disk.capacity),), disk.capacity
        if disk.since == ALL_ALLOCATED:  # "*" may fail or answer the whole disk: see allocation.py
            return allocated_areas(self.source_conn, self.source, snapshot, disk.source_key, self.reader)
        changes = changed_areas(self.source_conn, self.source, snapshot, disk.source_key, disk.since)
        return changes.areas, changes.total

    def _copy(self, journal: Journal, plans: list[_Plan], *, checkpoint_every: int, workers: int) -> Journal:
        """Copy every planned disk, resuming each past the bytes its checkpoint recorded.

        The chunk plan is the one the journal recorded when the cycle was
        planned, whatever this run was asked: a checkpoint counts bytes of
        that plan, so a resume cut differently would skip data.
        """
        chunk = journal.chunk or DEFAULT_CHUNK
        snapshot_disk = {d.key: d for d in snapshot_disks(self.source_conn, journal.source_snapshot or "")}
        replica_vm = refresh(self.conn, self.replica)
        total = sum(c.length for p in plans for c in plan_chunks(p.areas, p.disk.capacity, chunk=chunk))
        done = sum(p.disk.done for p in plans)
        moved = 0
        for plan in plans:
            chunks = list(plan_chunks(plan.areas, plan.disk.capacity, chunk=chunk))
            remaining = list(_skip(chunks, plan.disk.done))
            if not remaining:
                continue
            if plan.disk.done:
                self.log.info("disk_resumed", disk=plan.disk.source_key, from_byte=plan.disk.done)
            src = self.reader.source(
                snapshot_disk[plan.disk.source_key], vm=self.source.moref, snapshot=journal.source_snapshot
            )
            try:
                dst = self.writer.sink(
                    replica_disk(replica_vm, plan.disk.replica_key, plan.disk.replica_uuid),
                    vm=replica_vm.moref,
                )
            except BaseException:
                src.close()
                raise
            fresh = plan.disk.resync_reason is not None
            progress, since_checkpoint = plan.disk.done, 0
            try:
                for offset, data in read_chunks(src, remaining, workers=workers):
                    if self.throttle is not None:
                        self.throttle(len(data))
                    if not (fresh and data.count(0) == len(data)):
                        dst.write(offset, data)
                    progress += len(data)
                    since_checkpoint += len(data)
                    moved += len(data)
                    done += len(data)
                    if self.on_progress is not None:
                        self.on_progress(done, total)
                    if since_checkpoint >= checkpoint_every:
                        dst.flush()
                        journal = journal.with_disk(replace(plan.disk, done=progress))
                        write_options(self.lease, journal=journal)
                        since_checkpoint = 0
                        failpoints.point("checkpoint")
                dst.flush()
            finally:
                src.close()
                dst.close()
            journal = journal.with_disk(replace(plan.disk, done=progress))
            write_options(self.lease, journal=journal)
            failpoints.point("disk-copied")
        self.log.info("copied", bytes_moved=moved)
        return journal

    def _restore_point(self, journal: Journal, snapshot: SnapshotInfo | None) -> RestorePoint:
        """Freeze the replica as the new restore point and commit the state that names it."""
        assert journal.restore_point is not None
        vm = refresh(self.conn, self.replica)
        existing = replica_snapshot(vm, journal.restore_point)
        digests: tuple[tuple[int, str], ...] = ()
        if self.settings.verify and snapshot is not None:
            digests = self._verify(journal, snapshot, existing.moref if existing else None)
        elif self.settings.verify:
            self.log.error("restore_point_not_verified", reason="its source snapshot was removed by someone")
        if existing is None:
            taken = (journal.source_created or datetime.now(UTC)).isoformat()
            existing = create_snapshot(
                self.conn,
                vm,
                journal.restore_point,
                description=f"restore point of {self.source.name} taken {taken}",
                marker=RESTORE_POINT_MARKER,
                run_id=journal.cycle,
            ).snapshot
        failpoints.point("restore-point-taken")
        point, disks = journal.committed_point(existing.moref, existing.created, digests)
        committed = self.state.with_point(point, disks)
        write_options(self.lease, state=committed, clear_journal=True)
        self.state = committed  # only once vCenter holds it: an error report never half-commits
        failpoints.point("committed")
        return point

    def _verify(
        self, journal: Journal, snapshot: SnapshotInfo, frozen_at: str | None
    ) -> tuple[tuple[int, str], ...]:
        """Digest every disk of the new restore point and hold it against the source snapshot.

        A difference undoes the cycle (the replica goes back to its latest
        restore point) and raises: a restore point that is not the source's
        bytes must never be recorded.
        """
        source_disks = {d.key: d for d in snapshot_disks(self.source_conn, snapshot.moref)}
        replica_disks = {
            d.key: d
            for d in (
                snapshot_disks(self.conn, frozen_at) if frozen_at else refresh(self.conn, self.replica).disks
            )
        }
        digests = []
        for jd in journal.disks:
            ours = _digest(self.reader, source_disks[jd.source_key], self.source.moref, snapshot.moref)
            theirs = _digest(self.verifier, replica_disks[jd.replica_key], self.replica.vm.moref, frozen_at)
            if ours != theirs:
                self.log.error("restore_point_verification_failed", disk=jd.source_key)
                self._roll_back(written=True)
                remove_snapshot(self.source_conn, self.source, snapshot)
                raise VerificationFailed(
                    f"the replica of {self.source.name} disk {jd.source_key} does not match the source "
                    "snapshot after the copy; the cycle was undone",
                    vm=self.source.name,
                )
            digests.append((jd.replica_key, theirs))
        failpoints.point("verified")
        return tuple(digests)

    def _confirm(self, journal: Journal, snapshot: SnapshotInfo, resumed: bool) -> CycleResult:
        """Nothing changed: the newest restore point still holds the source's data; say so, add none.

        Back-to-back cycles of an idle VM would otherwise push every useful
        point out of retention within seconds.
        """
        frozen = {d.key: d for d in snapshot_disks(self.source_conn, snapshot.moref)}
        latest = replace(self.state.latest, confirmed=snapshot.created)
        confirmed = replace(
            self.state,
            disks=tuple(
                replace(
                    d,
                    change_id=frozen[d.source_key].change_id or d.change_id,
                    source_layer=frozen[d.source_key].file_name,
                )
                for d in self.state.disks
            ),
            restore_points=(*self.state.restore_points[:-1], latest),
            last_error=None,
        )
        write_options(self.lease, state=confirmed, clear_journal=True)
        self.state = confirmed
        failpoints.point("confirmed")
        self.source = remove_snapshot(self.source_conn, self.source, snapshot)
        self.log.info("cycle_found_no_change", restore_point=latest.id)
        return CycleResult(
            vm=self.source.name,
            replica=self.replica.vm.name,
            restore_point=latest.id,
            created=snapshot.created,
            quiesced=latest.quiesced,
            bytes_changed=0,
            bytes_moved=0,
            full_resync=(),
            resumed=resumed,
            seconds=0.0,
            confirmed=True,
        )

    def _finish(self, snapshot: SnapshotInfo | None) -> None:
        if snapshot is not None:
            self.source = remove_snapshot(self.source_conn, self.source, snapshot)
        failpoints.point("source-snapshot-removed")
        self.state = prune(self.conn, self.lease, self.replica.vm, self.state, self.settings)


def source_lease_live(conn: Connection, source: VMInfo, *, own: bool = False) -> bool:
    """Whether another operation on the source itself (a protect, a periodic clone) holds its lease now.

    With `own`, a lease held by this very process's live operation does not count.
    """
    holder = lease_holder(read_options(conn, source.moref).values)
    if holder is None or not is_live(holder, datetime.now(UTC)):
        return False
    return not (own and holder.pid == os.getpid() and holder.host == socket.gethostname())


def _digest(access: DiskAccess, disk: DiskInfo, vm: str, snapshot: str | None) -> str:
    device = access.source(disk, vm=vm, snapshot=snapshot)
    try:
        return checksum(device)
    finally:
        device.close()


def _skip(chunks: list[Extent], done: int) -> Iterable[Extent]:
    """The chunks left once `done` bytes of the plan are copied (checkpoints fall on chunk ends)."""
    seen = 0
    for c in chunks:
        if seen >= done:
            yield c
        seen += c.length
