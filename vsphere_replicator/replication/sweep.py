"""The orphan sweep, aware of replication: it never takes a snapshot an operation still needs.

`snapshots.find_orphans` finds every snapshot of ours older than a cut-off.
Some of those are not orphans at all: the source snapshot of a cycle in
flight (a multi-TB resync runs for hours), a seed snapshot, the snapshot a
failback reads. Those are named by a journal, a seed record or a failback
journal and are spared whatever their age. The rest go only under the
lease of the replica concerned, so no operation can start on a VM while
its snapshots are being swept; a VM whose lease is held is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from vsphere_replicator.connection import Connection
from vsphere_replicator.inventory import VMSelector, vm_options
from vsphere_replicator.replication.lease import Busy, Lease, is_live, lease_holder
from vsphere_replicator.replication.options import PREFIX
from vsphere_replicator.replication.store import find_replicas
from vsphere_replicator.snapshots import OrphanSnapshot, find_orphans, remove_orphan


@dataclass(frozen=True, slots=True)
class SpareReason:
    """Why a snapshot of ours was left alone."""

    snapshot: OrphanSnapshot
    reason: str


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What a sweep found: removed (or, in a dry run, would remove) and spared."""

    removed: tuple[OrphanSnapshot, ...]
    spared: tuple[SpareReason, ...]


def _named_snapshots(conn: Connection) -> dict[str, str]:
    """Snapshot moref -> what still needs it, from every journal, seed record and failback journal."""
    named: dict[str, str] = {}
    for record in find_replicas(conn):
        whose = (
            record.state.source.name
            if record.state
            else record.seed.source.name
            if record.seed
            else record.moref
        )
        if record.journal is not None and record.journal.source_snapshot:
            named[record.journal.source_snapshot] = f"the cycle in flight of {whose}"
        if record.seed is not None:
            named[record.seed.snapshot] = f"the unfinished seed of {whose}"
        if record.recovery is not None and record.recovery.snapshot:
            named[record.recovery.snapshot] = f"the {record.recovery.kind} of {whose}"
    return named


def sweep_snapshots(
    conn: Connection, *, older_than: timedelta, dry_run: bool = False, selector: VMSelector | None = None
) -> SweepResult:
    """Remove our snapshots older than `older_than` that nothing needs; report those spared and why."""
    orphans = find_orphans(conn, older_than=older_than, selector=selector)
    if not orphans:
        return SweepResult(removed=(), spared=())
    named = _named_snapshots(conn)
    records = find_replicas(conn)
    replica_of_vm = {record.moref: record.moref for record in records}
    options = vm_options(conn, PREFIX)
    by_uuid = {r.source_uuid: r.moref for r in records if r.source_uuid}
    now = datetime.now(UTC)
    removed: list[OrphanSnapshot] = []
    spared: list[SpareReason] = []
    by_vm: dict[str, list[OrphanSnapshot]] = {}
    for orphan in orphans:
        if orphan.snapshot.moref in named:
            spared.append(SpareReason(orphan, f"needed by {named[orphan.snapshot.moref]}"))
        else:
            by_vm.setdefault(orphan.vm_moref, []).append(orphan)
    for vm_moref, found in by_vm.items():
        own = lease_holder(options.get(vm_moref, {}))
        if is_live(own, now):
            assert own is not None
            spared.extend(SpareReason(o, f"{found[0].vm} is busy: {own.describe()}") for o in found)
            continue
        guard = replica_of_vm.get(vm_moref) or by_uuid.get(found[0].vm_uuid or "")
        if dry_run:
            removed.extend(found)
            continue
        try:
            lease = Lease(conn, guard, operation="sweep", vm=found[0].vm).acquire() if guard else None
        except Busy as exc:
            spared.extend(SpareReason(o, str(exc)) for o in found)
            continue
        try:
            still_named = _named_snapshots(conn) if lease is not None else named
            for orphan in found:
                if orphan.snapshot.moref in still_named:
                    spared.append(SpareReason(orphan, f"needed by {still_named[orphan.snapshot.moref]}"))
                    continue
                remove_orphan(conn, orphan)
                removed.append(orphan)
        finally:
            if lease is not None:
                lease.release()
    return SweepResult(removed=tuple(removed), spared=tuple(spared))
