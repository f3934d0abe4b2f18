"""Bringing a replica up: test failover, planned and unplanned failover.

Each runs under the replica's lease and, where it changes production, as a
journaled transaction (RecoveryJournal, on the replica):

- Test failover clones a restore point into a running copy; the replica and
  the source are untouched and replication carries on. A re-run finishes a
  copy an earlier run left; a failure removes the copy it made.
- Planned failover: journal "begun"; sync while the source runs; phase
  "source-off"; power the source off; final sync; phase "promoting"; move
  the replica's NICs, power it on; commit "promoted" (journal deleted);
  only then remove its restore-point snapshots. Nothing written is lost.
- Unplanned failover brings the replica up at a chosen restore point
  without touching the source (which may be gone): journal "begun"; revert
  to the point if needed; "promoting" as above.

Everything that can be checked is checked before anything is powered off
(state, restore point, recovery networks, power states). A fault before the
replica runs undoes what was done (the source is powered on again, the
replica stays a replica at its restore points); once the replica runs, the
operation only goes forward. A crash leaves the journal: running the same
command again continues from it, and `status` names the phase.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from vsphere_replicator.checks import check_callable
from vsphere_replicator.clone import clone_vm, destroy_vm
from vsphere_replicator.connection import Connection
from vsphere_replicator.customize import customize_ip
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound, ReplicatorError, StateError
from vsphere_replicator.inventory import VMInfo, VMSelector, find_vms, get_vm, vm_object
from vsphere_replicator.logs import get_logger
from vsphere_replicator.macs import MacKept, NicMac, keep_macs, nic_macs
from vsphere_replicator.networks import NicChange, check_networks, isolate_nics, remap_nics
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.replication.cycle import run_cycle
from vsphere_replicator.replication.disks import remove_point_snapshot
from vsphere_replicator.replication.lease import Lease
from vsphere_replicator.replication.replica import (
    Replica,
    adopt_newer_points,
    is_restore_point,
    refresh,
    replica_of,
    reread,
    revert_replica,
    settle_seed,
)
from vsphere_replicator.replication.restore_points import find_restore_point
from vsphere_replicator.replication.retention import test_copies
from vsphere_replicator.replication.settings import CycleResult
from vsphere_replicator.replication.sites import Sites, sites_of
from vsphere_replicator.replication.state import RecoveryJournal, ReplicaState, RestorePoint
from vsphere_replicator.replication.store import TEST_KEY, cleared_options, write_options
from vsphere_replicator.snapshots import find_snapshot
from vsphere_replicator.tasks import run_task


@dataclass(frozen=True, slots=True)
class FailoverResult(Shown):
    """Which VM now runs, at which restore point, and what it took."""

    vm: str
    running: str
    kind: str
    restore_point: str
    nics: tuple[NicChange, ...]
    final_cycle: CycleResult | None = None
    macs: tuple[MacKept, ...] = ()  # planned: per NIC, whether it kept the source's MAC address, and why not
    resumed: bool = False  # an interrupted operation (or a test copy already made) was carried on
    already_done: bool = False  # it had been done before: nothing changed but tidying


def _source_vm(conn: Connection, state: ReplicaState) -> VMInfo | None:
    """The source, if this vCenter still has it (by instance UUID)."""
    found = find_vms(conn, VMSelector(instance_uuid=state.source.instance_uuid))
    return found[0] if found else None


def _power_on(conn: Connection, vm: VMInfo) -> None:
    if vm.power_state != "poweredOn":
        run_task(conn, vm_object(conn, vm.moref).PowerOnVM_Task, what=f"power on {vm.name}", vm=vm.name)


def _power_off(conn: Connection, vm: VMInfo) -> None:
    if vm.power_state == "poweredOn":
        run_task(conn, vm_object(conn, vm.moref).PowerOffVM_Task, what=f"power off {vm.name}", vm=vm.name)


# -- test failover ---------------------------------------------------------------


def start_test_failover(
    conn: Connection,
    vm: str,
    *,
    restore_point: str | None = None,
    name: str = "{vm}-failover-test",
    test_networks: Mapping[str, str] | None = None,
) -> FailoverResult:
    """Bring up an isolated, running copy of a restore point; replication and source are untouched.

    The copy is a linked clone of the restore point (redo logs over its
    disks: seconds, and the space the test writes, whatever the disks'
    size); the restore point is held against pruning while the copy exists.
    Isolated by default: a NIC goes on the test network `test_networks`
    maps its port group (or its source's port group) to, and every other
    NIC is disconnected, so a test never answers on production's networks.
    Remove it with `cleanup_test_failover`. Runs under the replica's lease.
    """
    mapping = dict(test_networks or {})
    found = replica_of(conn, vm)
    log = get_logger(vm=vm, operation="test_failover")
    with Lease(conn, found.vm.moref, operation="test failover", vm=found.vm.name) as lease:
        replica = _settled(conn, lease, found)
        assert replica.state is not None
        state = replica.state
        point = find_restore_point(state, restore_point)
        snapshot = find_snapshot(replica.vm, moref=point.snapshot)
        target = state.target
        check_networks(conn, mapping.values(), what="--test-network / test_networks")
        copy = _test_copy(conn, state, point)
        made = copy is None
        if copy is None:
            stamp = json.dumps({"source": state.source.instance_uuid, "restore_point": point.id})
            copy = clone_vm(
                conn,
                replica.vm,
                name.replace("{vm}", vm),
                target.placement(provisioning=False),
                snapshot=snapshot,
                options={**cleared_options(), TEST_KEY: stamp},
                linked=True,
            )
            failpoints.point("test-copy-made")
        else:
            log.warning("test_copy_resumed", copy=copy.name)
        try:
            sources = {recovery: production for production, recovery in target.networks}
            nics = isolate_nics(conn, copy.moref, mapping, aliases=sources)
            failpoints.point("test-copy-nics-moved")
            if target.recovery_ip is not None and copy.power_state != "poweredOn":
                customize_ip(conn, copy.moref, target.recovery_ip, host_name=vm)
            _power_on(conn, get_vm(conn, VMSelector(moref=copy.moref)))
        except Exception:
            if made:  # a copy this run made and could not start goes again: nothing is left half-done
                destroy_vm(conn, VMSelector(moref=copy.moref))
            raise
        failpoints.point("test-copy-running")
    log.info("test_copy_running", copy=copy.name, restore_point=point.id)
    return FailoverResult(
        vm=vm, running=copy.name, kind="test", restore_point=point.id, nics=nics, resumed=not made
    )


def _test_copy(conn: Connection, state: ReplicaState, point: RestorePoint) -> VMInfo | None:
    for moref, stamp in test_copies(conn, state):
        if stamp.get("restore_point") == point.id:
            return get_vm(conn, VMSelector(moref=moref))
    return None


@dataclass(frozen=True, slots=True)
class FailoverCopy:
    """A test-failover copy of a protected VM: its name, the restore point it was made of, whether it runs."""

    name: str
    restore_point: str
    running: bool


def failover_test_copies(conn: Connection, vm: str) -> tuple[FailoverCopy, ...]:
    """The test-failover copies of `vm` that exist now; nothing is changed.

    What `cleanup_test_failover` would remove, and whether `start_test_failover`
    has anything left to do (Ansible's check mode asks it).
    """
    replica = replica_of(conn, vm, promoted=None)
    assert replica.state is not None
    found = []
    for moref, stamp in test_copies(conn, replica.state):
        copy = get_vm(conn, VMSelector(moref=moref))
        found.append(
            FailoverCopy(
                name=copy.name,
                restore_point=stamp.get("restore_point", ""),
                running=copy.power_state == "poweredOn",
            )
        )
    return tuple(found)


def cleanup_test_failover(conn: Connection, vm: str) -> tuple[str, ...]:
    """Power off and delete every test-failover copy of `vm`; returns their names."""
    replica = replica_of(conn, vm, promoted=None)
    assert replica.state is not None
    removed = []
    for moref, _ in test_copies(conn, replica.state):
        copy = get_vm(conn, VMSelector(moref=moref))
        destroy_vm(conn, copy)
        removed.append(copy.name)
    return tuple(removed)


# -- planned and unplanned failover ------------------------------------------------


def planned_failover(
    conn: Connection | Sites,
    vm: str,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> FailoverResult:
    """Sync, power the source off, sync what is left, and bring the replica up: no write is lost.

    Running it again after an interruption continues where it stopped.
    `on_progress(done, total)` follows the bytes of each of the two syncs.
    With `Sites`, the source is synced and powered off on its vCenter and
    the replica brought up on the target's.
    """
    check_callable(on_progress, "on_progress", optional=True)
    sites = sites_of(conn)
    found = replica_of(sites.target, vm, promoted=None)
    with Lease(sites.target, found.vm.moref, operation="planned failover", vm=found.vm.name) as lease:
        settled = _settled(sites.target, lease, found)
        run = _Failover(sites.target, lease, settled, on_progress=on_progress, source_conn=sites.source)
        if run.state.promoted:
            return run.already("planned")
        return run.planned(replica_access, source_access)


def unplanned_failover(
    conn: Connection | Sites, vm: str, *, restore_point: str | None = None, force: bool = False
) -> FailoverResult:
    """Bring the replica up at `restore_point` (default: the latest), without touching the source.

    Refused while the source runs (two copies of production would run at
    once) unless `force`: in this vCenter, or with `Sites` in the source's.
    Given the target site's connection alone, the source is not looked for:
    that is the disaster case, the source site is gone.
    """
    sites = sites_of(conn)
    found = replica_of(sites.target, vm, promoted=None)
    with Lease(sites.target, found.vm.moref, operation="unplanned failover", vm=found.vm.name) as lease:
        run = _Failover(sites.target, lease, _settled(sites.target, lease, found), source_conn=sites.source)
        if run.state.promoted:
            return run.already("unplanned")
        return run.unplanned(restore_point, force=force)


def _settled(conn: Connection, lease: Lease, found: Replica) -> Replica:
    """The replica read again under its lease, its state rebuilt if a revert took it back to its seed."""
    replica = settle_seed(conn, lease, reread(conn, found))
    if replica.state is None:
        name = replica.seed.source.name if replica.seed else replica.vm.name
        raise StateError(f"protecting {name} is unfinished: run protect again first", vm=name)
    return replica


class _Failover:
    def __init__(
        self,
        conn: Connection,
        lease: Lease,
        replica: Replica,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        source_conn: Connection | None = None,
    ) -> None:
        assert replica.state is not None
        self.conn = conn  # the replica's vCenter
        self.source_conn = source_conn or conn  # the source's
        self.on_progress = on_progress
        self.lease = lease
        self.replica = replica
        self.name = replica.state.source.name
        self.log = get_logger(vm=self.name, replica=replica.vm.name, operation="failover")
        # A revert by an interrupted failover brings back an older state with the snapshot it
        # reverted to: the points after it are recovered from their own snapshots first.
        self.state: ReplicaState = (
            replica.state
            if replica.state.promoted
            else adopt_newer_points(conn, lease, replica.vm, replica.state)
        )

    def already(self, kind: str) -> FailoverResult:
        """The VM had failed over (perhaps by a run that crashed before it tidied up): finish tidying."""
        vm = refresh(self.conn, self.replica)
        self._drop_restore_points(vm)
        point = self.state.promoted_point or self.state.latest.id
        self.log.info("already_failed_over", restore_point=point)
        return FailoverResult(
            vm=self.name,
            running=vm.name,
            kind=kind,
            restore_point=point,
            nics=(),
            resumed=True,
            already_done=True,
        )

    # -- checks before anything changes --------------------------------------------

    def _check(self, kind: str) -> RecoveryJournal | None:
        """The journal of an interrupted failover of this kind to carry on, or None; refuses a mismatch."""
        journal = self.replica.recovery
        if journal is not None and journal.kind != kind:
            raise StateError(
                f"a {journal.operation} of {self.name} is in progress (phase {journal.phase}); "
                "run it again to finish it",
                vm=self.name,
            )
        if self.state.promoted:
            raise StateError(f"{self.name} has already failed over to {self.replica.vm.name}", vm=self.name)
        check_networks(self.conn, (recovery for _, recovery in self.state.target.networks))
        if journal is None and self.replica.vm.power_state != "poweredOff":
            raise StateError(
                f"{self.replica.vm.name} is {self.replica.vm.power_state} but not failed over: "
                "power it off before failing over to it",
                vm=self.name,
            )
        return journal

    def _record(self, journal: RecoveryJournal | None, **changes: object) -> RecoveryJournal:
        base = journal or RecoveryJournal(kind="planned", phase="begun", started=datetime.now(UTC))
        updated = replace(base, **changes)  # type: ignore[arg-type]
        write_options(self.lease, recovery=updated)
        return updated

    # -- planned ---------------------------------------------------------------------

    def planned(self, replica_access: DiskAccess, source_access: DiskAccess | None) -> FailoverResult:
        journal = self._check("planned")
        resumed = journal is not None
        source = _source_vm(self.source_conn, self.state)
        if source is None:
            raise NotFound(
                f"{self.name} is not in this vCenter: a planned failover needs the source; "
                "use an unplanned failover",
                vm=self.name,
            )
        if journal is None:
            journal = self._record(
                None, kind="planned", phase="begun", source_was_on=source.power_state == "poweredOn"
            )
            failpoints.point("failover-begun")
        else:
            self.log.warning("failover_resumed", phase=journal.phase)
        final: CycleResult | None = None
        try:
            if journal.phase == "begun":
                if source.power_state == "poweredOn":
                    self._cycle(source, replica_access, source_access)
                journal = self._record(journal, phase="source-off")
                failpoints.point("failover-source-stopping")
            if journal.phase == "source-off":
                source = get_vm(self.source_conn, VMSelector(moref=source.moref))
                _power_off(self.source_conn, source)
                failpoints.point("failover-source-off")
                final = self._cycle(source, replica_access, source_access)
                journal = self._record(journal, phase="promoting", restore_point=self.state.latest.id)
                failpoints.point("failover-synced")
            point = find_restore_point(self.state, journal.restore_point)
            same_vcenter = self.source_conn is self.conn
            result = self._promote(
                journal,
                point,
                "planned",
                macs=nic_macs(self.source_conn, source.moref),
                source_moref=source.moref if same_vcenter else None,
            )
        except ReplicatorError:
            self._undo_planned(journal, source)
            raise
        return replace(result, final_cycle=final, resumed=resumed)

    def _cycle(
        self, source: VMInfo, replica_access: DiskAccess, source_access: DiskAccess | None
    ) -> CycleResult:
        result = run_cycle(
            Sites(source=self.source_conn, target=self.conn),
            get_vm(self.source_conn, VMSelector(moref=source.moref)),
            reread(self.conn, self.replica),
            self.lease,
            replica_access=replica_access,
            source_access=source_access,
            on_progress=self.on_progress,
            within_recovery=True,
        )
        self.replica = reread(self.conn, self.replica)
        assert self.replica.state is not None
        self.state = self.replica.state
        return result

    def _undo_planned(self, journal: RecoveryJournal, source: VMInfo) -> None:
        """A fault before the replica runs: power the source on again; the replica stays a replica."""
        replica = refresh(self.conn, self.replica)
        if replica.power_state == "poweredOn":
            return  # the replica runs: only going forward is safe; the journal says how
        try:
            if journal.source_was_on:
                _power_on(self.source_conn, get_vm(self.source_conn, VMSelector(moref=source.moref)))
            write_options(self.lease, clear_recovery=True)
        except ReplicatorError as exc:
            self.log.error("failover_not_undone", error=str(exc), phase=journal.phase)
            return
        self.log.warning("failover_undone", source_running=journal.source_was_on)

    # -- unplanned ---------------------------------------------------------------------

    def unplanned(self, restore_point: str | None, *, force: bool) -> FailoverResult:
        journal = self._check("unplanned")
        resumed = journal is not None
        chosen = restore_point or (journal.restore_point if journal else None)
        point = find_restore_point(self.state, chosen)
        find_snapshot(self.replica.vm, moref=point.snapshot)  # it is there before anything changes
        source = _source_vm(self.source_conn, self.state)
        if journal is None and source is not None and source.power_state == "poweredOn" and not force:
            raise InvalidInput(
                f"{self.name} is running: an unplanned failover would run two copies of it at once; "
                "use a planned failover, power it off, or force it (force=True, --force)",
                vm=self.name,
            )
        if journal is None:
            journal = self._record(None, kind="unplanned", phase="begun", restore_point=point.id)
            failpoints.point("failover-begun")
        else:
            self.log.warning("failover_resumed", phase=journal.phase)
        try:
            result = self._promote(journal, point, "unplanned")
        except ReplicatorError:
            self._undo_unplanned(journal)
            raise
        return replace(result, resumed=resumed)

    def _undo_unplanned(self, journal: RecoveryJournal) -> None:
        """A fault before the replica runs: it stays a replica, back at its latest restore point."""
        vm = refresh(self.conn, self.replica)
        if vm.power_state == "poweredOn":
            return
        try:
            latest = find_snapshot(vm, moref=self.state.latest.snapshot)
            if vm.current_snapshot != latest.moref:
                revert_replica(self.conn, self.lease, vm, latest)
            write_options(self.lease, state=self.state, clear_journal=True, clear_recovery=True)
        except ReplicatorError as exc:
            self.log.error("failover_not_undone", error=str(exc), phase=journal.phase)
            return
        self.log.warning("failover_undone")

    # -- promotion, shared ---------------------------------------------------------------

    def _promote(
        self,
        journal: RecoveryJournal,
        point: RestorePoint,
        kind: str,
        *,
        macs: tuple[NicMac, ...] = (),
        source_moref: str | None = None,
    ) -> FailoverResult:
        """Bring the replica up holding `point`; commit "promoted"; then drop its restore-point snapshots.

        `macs`: the source's NICs, whose MAC addresses the replica's NICs take
        where allowed (macs.py) before it powers on (a planned failover).
        """
        vm = refresh(self.conn, self.replica)
        nics: tuple[NicChange, ...] = ()
        macs_kept: tuple[MacKept, ...] = ()
        if vm.power_state != "poweredOn":
            at = find_snapshot(vm, moref=point.snapshot)
            if (
                vm.current_snapshot != at.moref
                or point != self.state.latest
                or self.replica.journal is not None
            ):
                # A revert brings back the options the snapshot saved: rewrite the truth at once.
                vm = revert_replica(self.conn, self.lease, vm, at)
                failpoints.point("failover-reverted")
                self.state = adopt_newer_points(self.conn, self.lease, vm, self.state)
                write_options(
                    self.lease,
                    state=self.state,
                    clear_journal=True,
                    recovery=replace(journal, phase="promoting", restore_point=point.id),
                )
            if journal.phase != "promoting":
                journal = self._record(journal, phase="promoting", restore_point=point.id)
            nics = remap_nics(self.conn, vm.moref, dict(self.state.target.networks))
            failpoints.point("failover-nics-moved")
            if macs:
                macs_kept = keep_macs(self.conn, vm.moref, macs, source_moref=source_moref)
                failpoints.point("failover-macs-kept")
            if self.state.target.recovery_ip is not None:  # its addresses on the recovery site
                customize_ip(self.conn, vm.moref, self.state.target.recovery_ip, host_name=self.name)
            _power_on(self.conn, refresh(self.conn, self.replica))
            failpoints.point("failover-powered-on")
        vm = refresh(self.conn, self.replica)
        ids = tuple((d.key, d.change_id) for d in vm.disks if d.change_id is not None)
        # History ends at the point brought up: later points belong to a timeline that was left.
        kept = self.state.restore_points[: self.state.restore_points.index(point) + 1]
        promoted = replace(
            self.state,
            promoted=True,
            promoted_point=point.id,
            failback_ids=ids,
            restore_points=kept,
            last_error=None,
        )
        write_options(self.lease, state=promoted, clear_journal=True, clear_recovery=True)
        self.state = promoted
        failpoints.point("failover-committed")
        self._drop_restore_points(vm)
        self.log.warning("failed_over", kind=kind, restore_point=point.id)
        return FailoverResult(
            vm=self.name, running=vm.name, kind=kind, restore_point=point.id, nics=nics, macs=macs_kept
        )

    def _drop_restore_points(self, vm: VMInfo) -> None:
        """The running VM sheds the restore-point snapshots (production does not run on a chain)."""
        for snap in list(vm.all_snapshots()):
            if is_restore_point(snap):
                vm = remove_point_snapshot(self.conn, vm, snap)
        failpoints.point("failover-points-dropped")
