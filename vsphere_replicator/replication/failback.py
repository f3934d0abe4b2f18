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

Across two vCenters (`Sites(source=A, target=B)`: A the site the VM was
protected from, B the recovery site where R runs) the same stages run with
each VM on its own site, every disk byte read on one site and written on
the other through the data path. When site A is fresh — the original is
gone with it — stage 1 seeds instead: O is created anew on A from a seed
snapshot of R, as protect seeds a replica on another vCenter
(cross_site.py), born carrying its seed record so that an interrupted run
finds and finishes it; CBT is switched on for both, so the reverse cycles,
the switch's syncs and stage 3 copy only what changed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from vsphere_replicator.cbt import changed_areas, enable_cbt
from vsphere_replicator.checks import check_callable
from vsphere_replicator.clone import check_placement
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import ChangeIdInvalid, InvalidInput, NotFound, StateError
from vsphere_replicator.extents import Extent, merge_extents
from vsphere_replicator.inventory import (
    DiskInfo,
    SnapshotInfo,
    VMInfo,
    VMSelector,
    find_vms,
    get_vm,
    snapshot_disks,
)
from vsphere_replicator.logs import get_logger
from vsphere_replicator.macs import MacKept
from vsphere_replicator.networks import NicChange
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.access import DiskAccess, HTTPDatastores, redo_log_reader
from vsphere_replicator.replication.cross_site import (
    check_cross_site,
    copy_pending,
    create_replica,
    fill_replica,
)
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
from vsphere_replicator.replication.seed import FIRST_POINT, finish_seed, seed_snapshot, verify_seed
from vsphere_replicator.replication.settings import ReplicaTarget
from vsphere_replicator.replication.sites import Sites, sites_of
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
    """The promoted replica R (its state says promoted, source O) and the original O.

    `original` is None when a fresh site A has neither O nor a VM an earlier
    failback began making of R there: stage 1 then seeds O anew.
    """

    running: Replica
    original: VMInfo | None


def _parties(sites: Sites, vm: str) -> _Parties | None:
    """R (on the target site) and O (on the source site) for the original named `vm`, or None."""
    hits = [
        r
        for r in all_replicas(sites.target)
        if r.state is not None and r.state.promoted and r.state.source.name == vm
    ]
    if len(hits) > 1:
        raise InvalidInput(f"{vm} has {len(hits)} failed-over replicas: {', '.join(r.vm.name for r in hits)}")
    if not hits:
        return None
    running = hits[0]
    assert running.state is not None
    by_uuid = VMSelector(instance_uuid=running.state.source.instance_uuid)
    if sites.single:
        return _Parties(running=running, original=get_vm(sites.source, by_uuid))
    # What an earlier run made or reversed first: a VM made anew may well have the original's
    # instance UUID (a site restored from backup keeps them), so the UUID alone cannot tell.
    made = _made_of(sites.source, running.vm)
    if made is not None:
        return _Parties(running=running, original=made.vm)
    found = find_vms(sites.source, by_uuid)
    return _Parties(running=running, original=found[0] if found else None)


def _made_of(conn: Connection, running: VMInfo) -> Replica | None:
    """The VM an earlier failback made of `running` on a fresh site (seeding, reversed or switched)."""
    uuid = (running.instance_uuid or "").lower()
    hits = [r for r in all_replicas(conn) if (r.source_uuid or "").lower() == uuid]
    if len(hits) > 1:
        raise StateError(
            f"{running.name} has {len(hits)} copies on the source site: "
            f"{', '.join(r.vm.name for r in hits)}; remove the extra ones",
            vm=running.name,
        )
    return hits[0] if hits else None


@dataclass(frozen=True, slots=True)
class _Access:
    """Which transport reaches which VM's disks.

    One vCenter: `replica` writes whichever VM is written and `source`
    reads the one read (when None: `replica` if it is VDDK, else HTTP /folder). Two vCenters: each reaches
    its own site's disks, for reading and writing — `replica` the target
    site's (B, where R runs), `source` the source site's (A).
    """

    sites: Sites
    replica: DiskAccess
    source: DiskAccess | None

    def reader(self, conn: Connection, vm: VMInfo) -> DiskAccess:
        if self.sites.single:
            return self.given_reader() or HTTPDatastores(conn, vm.folder)
        return self.writer(conn)

    def given_reader(self) -> DiskAccess | None:
        """What reads the running VM's disks, None for the cycle's default (one vCenter)."""
        if self.sites.single:
            # A replica's layers are redo logs: VDDK, when it writes, reads them too; /folder cannot.
            return self.source or redo_log_reader(self.replica)
        return self.replica

    def writer(self, conn: Connection) -> DiskAccess:
        if self.sites.single or conn is self.sites.target:
            return self.replica
        assert self.source is not None  # failback() refuses two sites without it
        return self.source


def failback(
    conn: Connection | Sites,
    vm: str,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    datastore: str | None = None,
    switch: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> FailoverResult | None:
    """Bring production back to the original VM named `vm` and protect it again in its first direction.

    The original must be powered off. `replica_access` writes the disks of
    whichever VM is being written (the original, then the replica);
    `source_access` reads the running one's (by default `replica_access`
    when it is VDDK, else the datastore HTTP endpoint). With `switch=False` only the
    first stage runs (the original becomes a replica of the running VM) and
    None is returned. Running it again after an interruption carries on.
    `on_progress(done, total)` follows the bytes of each copy: each disk of
    the reverse copy, then each sync of the switch.

    With `Sites(source=A, target=B)` of two vCenters — the same sides as for
    protect and failover: A the site `vm` was protected from, B the recovery
    site where it runs now — `replica_access` reads and writes disks on B
    and `source_access` (required) on A. When A has no VM with the
    original's instance UUID (a fresh site A), the original is created
    there anew, named `vm`, on `datastore` (required then), and every disk
    is copied through the data path; from then on everything is CBT-based.
    """
    check_callable(on_progress, "on_progress", optional=True)
    sites = sites_of(conn)
    if not sites.single and source_access is None:
        raise InvalidInput(
            f"failing {vm} back across two vCenters writes disks on both sites: give source_access "
            "(the source site's disks, e.g. --transport vddk) as well as replica_access",
            vm=vm,
        )
    access = _Access(sites=sites, replica=replica_access, source=source_access)
    parties = _parties(sites, vm)
    if parties is None:
        return _finished(sites, vm)
    running, original = parties.running, parties.original
    with ExitStack() as leases:
        running_lease = leases.enter_context(
            Lease(sites.target, running.vm.moref, operation="failback", vm=running.vm.name)
        )
        original_lease = (
            None
            if original is None
            else leases.enter_context(
                Lease(sites.source, original.moref, operation="failback", vm=original.name)
            )
        )
        run = _Failback(
            sites,
            reread(sites.target, running),
            original,
            running_lease,
            original_lease,
            leases=leases,
            access=access,
            datastore=datastore,
            on_progress=on_progress,
        )
        return run.execute(switch=switch)


def _finished(sites: Sites, vm: str) -> FailoverResult:
    """No failed-over replica of `vm`: done already (tidy the original), or nothing to fail back."""
    original = get_vm(sites.source, vm)
    record = record_from(read_options(sites.source, original.moref), original.name)
    forward = [
        r
        for r in all_replicas(sites.target)
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
            Lease(sites.target, replica.vm.moref, operation="failback", vm=replica.vm.name),
            Lease(sites.source, original.moref, operation="failback", vm=original.name) as lease,
        ):
            if promoted_state:
                write_options(lease, extra=cleared_options())
            in_flight = (
                [replica.journal.source_snapshot]
                if replica.journal and replica.journal.source_snapshot
                else []
            )
            sweep_source(
                sites.source, get_vm(sites.source, VMSelector(moref=original.moref)), protected=in_flight
            )
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
        sites: Sites,
        running: Replica,
        original: VMInfo | None,
        running_lease: Lease,
        original_lease: Lease | None,
        *,
        leases: ExitStack,
        access: _Access,
        datastore: str | None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        assert running.state is not None
        self.running_site = sites.target  # R's vCenter (B)
        self.original_site = sites.source  # O's vCenter (A); the same one with one vCenter
        self.access = access
        self.datastore = datastore
        self.on_progress = on_progress
        self.running = running
        self.state: ReplicaState = running.state
        self.name = running.state.source.name
        self.original = original
        self.running_lease = running_lease
        self.original_lease = original_lease
        self.leases = leases
        self.log = get_logger(vm=self.name, replica=running.vm.name, operation="failback")

    def execute(self, *, switch: bool) -> FailoverResult | None:
        journal = self.running.recovery
        if journal is not None and journal.kind != "failback":
            raise StateError(
                f"a {journal.kind} failover is in progress on {self.running.vm.name}; run it again first",
                vm=self.name,
            )
        mine = (
            None
            if self.original is None
            else record_from(read_options(self.original_site, self.original.moref), self.original.name)
        )
        reversed_already = (
            mine is not None
            and mine.state is not None
            and mine.state.source.instance_uuid == self.running.vm.instance_uuid
        )
        switched = reversed_already and mine is not None and mine.state is not None and mine.state.promoted
        # O is made anew of R: site A had no original, or an earlier run began making it
        seeding = self.original is None or (mine is not None and mine.state is None and mine.seed is not None)
        if not switched and not reversed_already:
            if seeding:
                self._check_fresh()
            elif self.original is not None and self.original.power_state != "poweredOff":
                raise InvalidInput(
                    f"{self.original.name} must be powered off before failing back to it", vm=self.name
                )
            if journal is None:
                journal = RecoveryJournal(kind="failback", phase="reversing", started=datetime.now(UTC))
                write_options(self.running_lease, recovery=journal)
                failpoints.point("failback-begun")
            if seeding:
                self._seed_original()
            else:
                self._reverse_into_original(journal)
            journal = replace(journal, phase="switching", snapshot=None)
            write_options(self.running_lease, recovery=journal)
            failpoints.point("failback-reversed")
        elif journal is None:
            journal = RecoveryJournal(kind="failback", phase="switching", started=datetime.now(UTC))
        if not switch:
            self.log.warning("replication_reversed", now_source=self.running.vm.name)
            return None
        assert self.original is not None and self.original_lease is not None
        final = None
        nics: tuple[NicChange, ...] = ()
        macs: tuple[MacKept, ...] = ()
        if not switched:
            if journal.phase != "switching":
                journal = replace(journal, phase="switching")
                write_options(self.running_lease, recovery=journal)
            reverse = reread(self.original_site, read_replica(self.original_site, self.original))
            switch_run = _Failover(
                self.original_site,
                self.original_lease,
                reverse,
                on_progress=self.on_progress,
                source_conn=self.running_site,
            )
            result = (
                switch_run.already("planned")
                if switch_run.state.promoted
                else switch_run.planned(self.access.writer(self.original_site), self.access.given_reader())
            )
            final, nics, macs = result.final_cycle, result.nics, result.macs
            failpoints.point("failback-switched")
        if journal.phase != "reprotecting":
            journal = replace(journal, phase="reprotecting", snapshot=None)
            write_options(self.running_lease, recovery=journal)
        point = self._reprotect_running(journal)
        self.log.warning("protection_restored", source=self.original.name, replica=self.running.vm.name)
        return FailoverResult(
            vm=self.name,
            running=self.original.name,
            kind="failback",
            restore_point=point,
            nics=nics,
            final_cycle=final,
            macs=macs,
            resumed=self.running.recovery is not None,
        )

    # -- stage 1 on a fresh site A: the original made anew of the running VM ------------

    def _reverse_target(self) -> ReplicaTarget:
        """Where O lives as R's replica: its datastore, its name, R's port groups mapped back."""
        datastore = self.original.datastores[0] if self.original is not None else self.datastore
        assert datastore is not None  # _check_fresh
        return ReplicaTarget(
            datastore=datastore,
            name="{vm}",
            networks=tuple((b, a) for a, b in self.state.target.networks),
        )

    def _check_fresh(self) -> None:
        """Refuse, before anything changes, a seed of the original on site A that could not finish."""
        if self.original is not None:
            return  # an earlier run made it: it is finished as it was begun
        if self.datastore is None:
            raise InvalidInput(
                f"{self.name} is not on the source site (no VM has its instance UUID): failback creates it "
                "there anew; say on which datastore (datastore=, --datastore)",
                vm=self.name,
            )
        if find_vms(self.original_site, VMSelector(name=self.name)):
            raise InvalidInput(
                f"the source site has a VM named {self.name} that is not the original (its instance UUID "
                "differs): rename or remove it, then fail back",
                vm=self.name,
            )
        target = self._reverse_target()
        check_placement(self.original_site, target.placement())
        running = get_vm(self.running_site, VMSelector(moref=self.running.vm.moref))
        check_cross_site(self._reverse_sites(), running, target, self.access.writer(self.original_site))

    def _reverse_sites(self) -> Sites:
        return Sites(source=self.running_site, target=self.original_site)

    def _seed_original(self) -> None:
        """Create O on site A from a seed snapshot of R, fill every disk, commit its first restore point.

        protect's seed across vCenters (cross_site.py, seed.py), under R's
        lease and then O's: the new O carries the seed record from birth, so
        an interrupted run finds it (`_made_of`) and finishes it. CBT is
        switched on for R (the reverse cycles read it) and, by
        cross_site.py, for O (the reprotect after the switch copies only
        what O wrote).
        """
        sites = self._reverse_sites()
        target = self._reverse_target()
        started = time.monotonic()
        reader, writer = self.access.writer(self.running_site), self.access.writer(self.original_site)
        running = get_vm(self.running_site, VMSelector(moref=self.running.vm.moref))
        made = _made_of(self.original_site, running)
        if made is not None and made.seed is not None:
            vm, record = made.vm, made.seed
            self.log.warning("failback_seed_resumed", original=vm.name)
        else:
            hardware = check_cross_site(sites, running, target, writer)
            running = sweep_source(self.running_site, running)  # a seed snapshot a crash left unused
            if not running.cbt_enabled or any(d.change_id is None for d in running.disks):
                running = enable_cbt(self.running_site, running)
            record, snapshot = seed_snapshot(self.running_site, running, self.state.settings, target)
            try:
                vm = create_replica(sites, running, target, snapshot, record, hardware, name=self.name)
            except Exception:  # nothing made: no snapshot of ours left on R (a crash: the next run sweeps it)
                remove_snapshot(self.running_site, running, snapshot)
                raise
            failpoints.point("failback-original-made")
        if self.original_lease is None:
            self.original_lease = self.leases.enter_context(
                Lease(self.original_site, vm.moref, operation="failback", vm=vm.name)
            )
        if copy_pending(sites, vm):
            running = get_vm(self.running_site, VMSelector(moref=running.moref))
            at = next((s for s in running.all_snapshots() if s.moref == record.snapshot), None)
            if at is None:
                raise StateError(
                    f"the seed snapshot of {running.name} is gone before its disks were copied: "
                    f"delete {vm.name} on the source site and fail back again",
                    vm=self.name,
                )
            vm = fill_replica(
                sites, self.original_lease, running, at, vm, reader, writer, target.datastore, self._percent()
            )
        seeded = Replica(vm=vm, state=None, journal=None, seed=record)
        finish_seed(
            sites, self.original_lease, running, seeded, target, self.state.settings, started, reader, writer
        )
        self.original = get_vm(self.original_site, VMSelector(moref=vm.moref))
        self.log.info("original_seeded", original=vm.name)

    def _percent(self) -> Callable[[int], None] | None:
        """The seed's percentage as on_progress(done, 100)."""
        on_progress = self.on_progress
        if on_progress is None:
            return None
        return lambda percent: on_progress(percent, 100)

    # -- stage 1: the original becomes the running VM's replica ----------------------

    def _reverse_into_original(self, journal: RecoveryJournal) -> None:
        assert self.original is not None and self.original_lease is not None
        running = get_vm(self.running_site, VMSelector(moref=self.running.vm.moref))
        original = sweep_source(self.original_site, self.original)  # a divergence check an earlier run left
        for snap in list(original.all_snapshots()):  # a first point an earlier run took but never recorded
            if is_restore_point(snap):
                original = remove_point_snapshot(self.original_site, original, snap)
        snap = self._running_snapshot(running, journal)
        state = self.state
        promoted_at = find_restore_point(state, state.promoted_point)
        reader = self.access.reader(self.running_site, running)
        writer = self.access.writer(self.original_site)
        pairs = _copy_changes(
            (self.running_site, self.original_site),
            running=running,
            snapshot=snap,
            running_ids=dict(state.failback_ids),
            target=original,
            target_ids=dict(promoted_at.change_ids),
            mirrors=[(d.replica_key, d.source_key) for d in state.disks],
            reader=reader,
            writer=writer,
            on_progress=self.on_progress,
        )
        failpoints.point("failback-copied")
        reverse = self._first_point(
            (self.running_site, self.original_site),
            running=running,
            snapshot=snap,
            target=get_vm(self.original_site, VMSelector(moref=original.moref)),
            pairs=pairs,
            lease=self.original_lease,
            replica_target=self._reverse_target(),
            reader=reader,
            writer=writer,
        )
        self.log.info("original_reversed", restore_point=reverse.latest.id)
        remove_snapshot(self.running_site, get_vm(self.running_site, VMSelector(moref=running.moref)), snap)

    def _running_snapshot(self, running: VMInfo, journal: RecoveryJournal) -> SnapshotInfo:
        """The snapshot of the running VM the reverse copy reads (the journal's, if it survived)."""
        existing = next((s for s in running.all_snapshots() if s.moref == journal.snapshot), None)
        if existing is not None:
            return existing
        taken = create_snapshot(
            self.running_site,
            running,
            f"{FAILBACK_SNAPSHOT}{uuid.uuid4().hex[:8]}",
            description=f"failback to {self.name}",
        ).snapshot
        write_options(self.running_lease, recovery=replace(journal, snapshot=taken.moref))
        failpoints.point("failback-snapshot-taken")
        return taken

    def _first_point(
        self,
        conns: tuple[Connection, Connection],
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
        """Take `target`'s first restore point and write its state as `running`'s replica.

        `conns` are `running`'s vCenter and `target`'s (one and the same with one vCenter).
        """
        point_snapshot = create_snapshot(
            conns[1],
            target,
            FIRST_POINT,
            description=f"failback restore point of {running.name}",
            marker=RESTORE_POINT_MARKER,
        ).snapshot
        failpoints.point("failback-point-taken")
        digests: tuple[tuple[int, str], ...] = ()
        if self.state.settings.verify:
            digests = verify_seed(
                Sites(source=conns[0], target=conns[1]),
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

    def _reprotect_running(self, journal: RecoveryJournal) -> str:
        """R (off) becomes O's replica again; then O's reverse state is cleared. Returns R's first point."""
        assert self.original is not None and self.original_lease is not None
        on_a, on_b = self.original_site, self.running_site
        mine = record_from(read_options(on_a, self.original.moref), self.original.name)
        if mine.state is None or not mine.state.promoted:
            raise StateError(f"{self.original.name} did not come up: run failback again", vm=self.name)
        reverse = mine.state  # O promoted: source R, failback ids = O's change ids at its promotion
        original = get_vm(on_a, VMSelector(moref=self.original.moref))
        for snap in list(original.all_snapshots()):  # its reverse restore point, if the switch left it
            if is_restore_point(snap):
                original = remove_point_snapshot(on_a, original, snap)
        replica = sweep_source(on_b, get_vm(on_b, VMSelector(moref=self.running.vm.moref)))
        for snap in list(replica.all_snapshots()):  # a first point an earlier run took but never recorded
            if is_restore_point(snap):
                replica = remove_point_snapshot(on_b, replica, snap)
        if replica.power_state != "poweredOff":
            raise StateError(
                f"{replica.name} runs again: power it off and run failback again", vm=replica.name
            )
        snap = self._snapshot_of(original, journal)
        promoted_at = find_restore_point(reverse, reverse.promoted_point)
        reader = self.access.reader(on_a, original)
        writer = self.access.writer(on_b)
        pairs = _copy_changes(
            (on_a, on_b),
            running=original,
            snapshot=snap,
            running_ids=dict(reverse.failback_ids),
            target=replica,
            target_ids=dict(promoted_at.change_ids),
            mirrors=[(d.replica_key, d.source_key) for d in reverse.disks],
            reader=reader,
            writer=writer,
        )
        failpoints.point("failback-reprotect-copied")
        forward = self._first_point(
            (on_a, on_b),
            running=original,
            snapshot=snap,
            target=get_vm(on_b, VMSelector(moref=replica.moref)),
            pairs=pairs,
            lease=self.running_lease,
            replica_target=self.state.target,
            reader=reader,
            writer=writer,
        )
        write_options(self.original_lease, extra=cleared_options())
        failpoints.point("failback-original-cleared")
        remove_snapshot(on_a, get_vm(on_a, VMSelector(moref=original.moref)), snap)
        return forward.latest.id

    def _snapshot_of(self, vm: VMInfo, journal: RecoveryJournal) -> SnapshotInfo:
        existing = next((s for s in vm.all_snapshots() if s.moref == journal.snapshot), None)
        if existing is not None:
            return existing
        taken = create_snapshot(
            self.original_site,
            vm,
            f"{FAILBACK_SNAPSHOT}{uuid.uuid4().hex[:8]}",
            description=f"reprotect {vm.name}",
        ).snapshot
        write_options(
            self.running_lease, recovery=replace(journal, phase="reprotecting", snapshot=taken.moref)
        )
        failpoints.point("failback-reprotect-snapshot-taken")
        return taken


def _copy_changes(
    conns: tuple[Connection, Connection],
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
    `conns` are the running VM's vCenter and the target's.
    """
    conn, target_conn = conns
    frozen = {d.key: d for d in snapshot_disks(conn, snapshot.moref)}
    theirs = {d.key: d for d in target.disks}
    pairs = []
    for running_key, target_key in mirrors:
        at, dest = frozen[running_key], theirs[target_key]
        areas = _changes_since(conn, running, snapshot, at, running_ids.get(running_key))
        extra = (
            _divergence(target_conn, target, target_key, target_ids.get(target_key))
            if areas is not None
            else None
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
