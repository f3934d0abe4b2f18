"""Protecting a VM: its replica's first restore point, by clone or by adopting a copy.

Steps, each safe to crash after: CBT on (with its stun) and a marked seed
snapshot of the source; a clone of that snapshot born carrying a seed
record (so a crash leaves a replica the next `protect` recognises and
finishes); the replica's first restore point; the committed state; the
seed snapshot removed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import fields, replace
from datetime import UTC, datetime

from vsphere_replicator.cbt import ALL_ALLOCATED, change_ids_at, changed_areas, enable_cbt
from vsphere_replicator.checks import check_callable
from vsphere_replicator.clone import check_placement, clone_vm
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput, StateError, VerificationFailed
from vsphere_replicator.inventory import DiskInfo, SnapshotInfo, VMInfo, VMRef, resolve_vm, snapshot_disks
from vsphere_replicator.logs import get_logger
from vsphere_replicator.networks import check_networks
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.access import DiskAccess, HTTPDatastores
from vsphere_replicator.replication.cross_site import (
    by_position,
    check_cross_site,
    copy_pending,
    create_replica,
    fill_replica,
)
from vsphere_replicator.replication.cycle import source_lease_live
from vsphere_replicator.replication.lease import Lease
from vsphere_replicator.replication.options import read_options
from vsphere_replicator.replication.replica import (
    RESTORE_POINT_MARKER,
    SEED_SNAPSHOT,
    Replica,
    find_replica,
    replica_snapshot,
    sweep_source,
)
from vsphere_replicator.replication.settings import (
    CycleResult,
    CycleSettings,
    ReplicaTarget,
    check_protect_arguments,
)
from vsphere_replicator.replication.sites import Sites, sites_of
from vsphere_replicator.replication.state import (
    DiskState,
    ReplicaState,
    RestorePoint,
    SeedRecord,
    SourceIdentity,
    point_id,
)
from vsphere_replicator.replication.store import (
    CLONE_KEY,
    TEST_KEY,
    cleared_options,
    is_replica_options,
    seed_options,
    write_options,
)
from vsphere_replicator.snapshots import QuiesceFallback, create_snapshot, remove_snapshot
from vsphere_replicator.tasks import ProgressCallback
from vsphere_replicator.verify import checksum, first_mismatch

FIRST_POINT = point_id(1)


def protect(
    conn: Connection | Sites,
    vm: VMRef,
    target: ReplicaTarget,
    *,
    settings: CycleSettings | None = None,
    adopt: VMRef | None = None,
    replica_access: DiskAccess | None = None,
    source_access: DiskAccess | None = None,
    allow_source_datastore: bool = False,
    on_progress: ProgressCallback | None = None,
) -> CycleResult:
    """Make `vm`'s replica on `target` and its first restore point; finishes an interrupted seed.

    With `adopt`, an existing powered-off copy becomes the replica instead
    of a clone, after every disk is compared byte for byte with the seed
    snapshot (through `source_access` and `replica_access`). Everything is
    checked before anything changes: the source is not itself a replica or
    one of our copies, the target datastore is not one the source lives on
    (unless `allow_source_datastore`: a replica beside its source survives
    no loss of that datastore), and the placement and recovery networks
    exist. Runs under the source's lease, then the new replica's (Busy when
    another operation holds one). `on_progress` receives the clone task's
    percentage (0-100) while a seed is cloned.

    With `Sites` whose source and target are different vCenters, the replica
    is created empty on the target site and its disks are copied from the
    seed snapshot through `source_access` and `replica_access`
    (replication/cross_site.py); everything about it lives on the target.
    """
    check_protect_arguments(
        target=target,
        settings=settings,
        replica_access=replica_access,
        source_access=source_access,
    )
    check_callable(on_progress, "on_progress", optional=True)
    started = time.monotonic()
    chosen = settings or CycleSettings()
    if chosen.verify and replica_access is None:
        raise InvalidInput("verify needs replica_access to read the replica's disks")
    sites = sites_of(conn)
    source = resolve_vm(sites.source, vm)
    _check_protectable(sites, source, target, allow_source_datastore=allow_source_datastore)
    hardware = None if sites.single else check_cross_site(sites, source, target, replica_access)
    log = get_logger(vm=source.name, operation="protect")
    reader = source_access or HTTPDatastores(sites.source, source.folder)
    with Lease(sites.source, source.moref, operation="protect", vm=source.name):
        found = find_replica(sites.target, source)
        if found is not None:
            found.require_readable()
        if found is not None and found.state is not None:
            return _already_protected(sites, source, found, target, started, settings)
        if found is not None and found.seed is not None:
            log.warning("seed_resumed", replica=found.vm.name)
            replica, record = found.vm, found.seed
            source = sweep_source(sites.source, source, keep=record.snapshot)
        else:
            copy = _adoptable(sites.target, adopt, replica_access) if adopt is not None else None
            source = sweep_source(sites.source, source)
            if not source.cbt_enabled or any(d.change_id is None for d in source.disks):
                source = enable_cbt(sites.source, source)
            record, snapshot = seed_snapshot(sites.source, source, chosen, target)
            try:
                if copy is not None:
                    assert replica_access is not None
                    replica = _adopt(sites, source, snapshot, copy, record, reader, replica_access)
                elif hardware is None:
                    replica = _clone(sites.source, source, target, snapshot, record, on_progress)
                else:
                    replica = create_replica(sites, source, target, snapshot, record, hardware)
            except (
                Exception
            ):  # a failed seed leaves no snapshot of ours (a crash: the next protect sweeps it)
                remove_snapshot(sites.source, source, snapshot)
                raise
            failpoints.point("seed-replica-made")
        seeded = Replica(vm=replica, state=None, journal=None, seed=record)
        with Lease(sites.target, replica.moref, operation="protect", vm=replica.name) as lease:
            if not sites.single and copy_pending(sites, replica):
                assert replica_access is not None  # check_cross_site
                source = resolve_vm(sites.source, source)
                at = next((s for s in source.all_snapshots() if s.moref == record.snapshot), None)
                if at is None:
                    raise StateError(
                        f"the seed snapshot of {source.name} is gone before its disks were copied: "
                        f"delete {replica.name} on the target site and protect again",
                        vm=source.name,
                    )
                replica = fill_replica(
                    sites, lease, source, at, replica, reader, replica_access, target.datastore, on_progress
                )
                seeded = replace(seeded, vm=replica)
            return finish_seed(sites, lease, source, seeded, target, chosen, started, reader, replica_access)


def _already_protected(
    sites: Sites,
    source: VMInfo,
    replica: Replica,
    target: ReplicaTarget,
    started: float,
    settings: CycleSettings | None,
) -> CycleResult:
    """Protecting again what is protected as asked changes nothing but tidying what a crash left."""
    state = replica.state
    assert state is not None
    if state.target.datastore != target.datastore:
        raise InvalidInput(
            f"{source.name} is already protected by {replica.vm.name} on {state.target.datastore}; "
            "unprotect it first to protect it elsewhere",
            vm=source.name,
        )
    if settings is not None and settings != state.settings:
        different = [
            f.name
            for f in fields(CycleSettings)
            if getattr(settings, f.name) != getattr(state.settings, f.name)
        ]
        get_logger(vm=source.name, operation="protect").warning(
            "settings_not_changed",
            asked=different,
            hint=f"protect records them once; change them with: vsphere-replicator settings {source.name}",
        )
    if (
        replica.journal is None
        and replica.recovery is None
        and not source_lease_live(sites.source, source, own=True)
    ):
        sweep_source(sites.source, source)  # e.g. the seed snapshot of a protect killed after its commit
    latest = state.latest
    get_logger(vm=source.name, operation="protect").info("already_protected", replica=replica.vm.name)
    return CycleResult(
        vm=source.name,
        replica=replica.vm.name,
        restore_point=latest.id,
        created=latest.created,
        quiesced=latest.quiesced,
        bytes_changed=0,
        bytes_moved=0,
        full_resync=(),
        resumed=True,
        seconds=time.monotonic() - started,
        confirmed=True,
    )


def _check_protectable(
    sites: Sites, source: VMInfo, target: ReplicaTarget, *, allow_source_datastore: bool
) -> None:
    """Refuse, before anything changes, a source or a target that cannot make a sound replica."""
    conn = sites.source
    if source.template:
        raise InvalidInput(f"{source.name} is a template, not a VM to protect", vm=source.name)
    marks = read_options(conn, source.moref).values
    if is_replica_options(marks) or TEST_KEY in marks or CLONE_KEY in marks:
        raise InvalidInput(
            f"{source.name} is a replica or a copy made by vsphere_replicator: its writes bypass "
            "Changed Block Tracking, so a replica of it would silently miss data; protect the original",
            vm=source.name,
        )
    if sites.single and target.datastore in source.datastores and not allow_source_datastore:
        raise InvalidInput(
            f"{target.datastore} holds {source.name} itself: a replica there is lost with its source; "
            "choose another datastore, or allow it (allow_source_datastore, --allow-source-datastore)",
            vm=source.name,
        )
    check_placement(sites.target, target.placement())
    if sites.single:
        check_networks(conn, (name for pair in target.networks for name in pair), what="--network / networks")


def seed_snapshot(
    conn: Connection, source: VMInfo, settings: CycleSettings, target: ReplicaTarget
) -> tuple[SeedRecord, SnapshotInfo]:
    """The marked seed snapshot of `source` and the seed record a replica made of it carries."""
    cycle = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    taken = create_snapshot(
        conn,
        source,
        SEED_SNAPSHOT + cycle,
        description="seed of a replica",
        quiesce=settings.quiesce != "never",
        on_quiesce_failure=QuiesceFallback.CRASH_CONSISTENT
        if settings.quiesce == "try"
        else QuiesceFallback.FAIL,
        run_id=cycle,
    )
    failpoints.point("seed-snapshot-taken")
    ids = change_ids_at(conn, taken.snapshot)
    untracked = [key for key, cid in ids.items() if cid is None]
    if untracked:
        remove_snapshot(conn, source, taken.snapshot)
        raise InvalidInput(f"CBT is not tracking disks {untracked} of {source.name}", vm=source.name)
    identity = SourceIdentity(moref=source.moref, name=source.name, instance_uuid=source.instance_uuid or "")
    record = SeedRecord(
        source=identity,
        snapshot=taken.snapshot.moref,
        cycle=cycle,
        change_ids=tuple((k, c) for k, c in sorted(ids.items()) if c is not None),
        quiesced=taken.quiesced,
        target=target,
        settings=settings,
        created=taken.snapshot.created,
    )
    return record, taken.snapshot


def _clone(
    conn: Connection,
    source: VMInfo,
    target: ReplicaTarget,
    snapshot: SnapshotInfo,
    record: SeedRecord,
    on_progress: ProgressCallback | None = None,
) -> VMInfo:
    options = {**cleared_options(), **seed_options(record)}
    return clone_vm(
        conn,
        source,
        target.name,
        target.placement(),
        snapshot=snapshot,
        options=options,
        on_progress=on_progress,
    )


def _adoptable(conn: Connection, adopt: VMRef, access: DiskAccess | None) -> VMInfo:
    """The copy to adopt, refused before anything changes when it cannot be."""
    if access is None:
        raise InvalidInput("adopting a copy needs replica_access to read its disks")
    copy = resolve_vm(conn, adopt)
    if copy.power_state != "poweredOff" or copy.snapshots:
        raise InvalidInput(
            f"{copy.name} must be powered off and without snapshots to be adopted", vm=copy.name
        )
    return copy


def _adopt(
    sites: Sites,
    source: VMInfo,
    snapshot: SnapshotInfo,
    copy: VMInfo,
    record: SeedRecord,
    reader: DiskAccess,
    writer: DiskAccess,
) -> VMInfo:
    """Check that `copy` holds the seed snapshot's bytes, then mark it as the replica being seeded."""
    frozen = by_position(snapshot_disks(sites.source, snapshot.moref))
    disks = by_position(copy.disks)
    if [d.capacity for d in frozen] != [d.capacity for d in disks]:
        raise InvalidInput(
            f"{copy.name}'s disks do not match {source.name}'s in number or size", vm=copy.name
        )
    for ours, theirs in zip(frozen, disks, strict=True):
        a = reader.source(ours, vm=source.moref, snapshot=snapshot.moref)
        try:
            b = writer.source(theirs, vm=copy.moref)
        except BaseException:
            a.close()
            raise
        try:
            mismatch = first_mismatch(a, b)
        finally:
            a.close()
            b.close()
        if mismatch is not None:
            raise InvalidInput(
                f"{copy.name} {theirs.label} differs from {source.name} {ours.label} "
                f"at byte {mismatch.offset}; it cannot be adopted as the seed",
                vm=copy.name,
            )
    with Lease(sites.target, copy.moref, operation="adopt", vm=copy.name) as lease:
        write_options(lease, extra={**cleared_options(), **seed_options(record)})
    return copy


def verify_seed(
    conn: Connection | Sites,
    source: VMInfo,
    point: SnapshotInfo,
    pairs: list[tuple[DiskInfo, DiskInfo]],
    reader: DiskAccess,
    writer: DiskAccess,
    *,
    at: str,
    replica: str,
) -> tuple[tuple[int, str], ...]:
    """Digest a first restore point's disks and hold each against the snapshot it was made from.

    `pairs` are (source disk at snapshot `at`, replica disk) by position; `point` is a
    snapshot of the VM `replica` (both morefs).
    """
    frozen = {d.key: d for d in snapshot_disks(sites_of(conn).target, point.moref)}
    digests = []
    for ours, theirs in pairs:
        a = reader.source(ours, vm=source.moref, snapshot=at)
        try:
            b = writer.source(frozen[theirs.key], vm=replica, snapshot=point.moref)
        except BaseException:
            a.close()
            raise
        try:
            expected, actual = checksum(a), checksum(b)
        finally:
            a.close()
            b.close()
        if expected != actual:
            raise VerificationFailed(
                f"the replica of {source.name} {ours.label} does not match the seed snapshot", vm=source.name
            )
        digests.append((theirs.key, actual))
    return tuple(digests)


def finish_seed(
    sites: Sites,
    lease: Lease,
    source: VMInfo,
    replica: Replica,
    target: ReplicaTarget,
    settings: CycleSettings,
    started: float,
    reader: DiskAccess,
    writer: DiskAccess | None,
) -> CycleResult:
    """Take the seeded replica's first restore point and commit its state; then drop the seed snapshot."""
    assert replica.seed is not None
    record = replica.seed
    vm = replica.vm
    source = resolve_vm(sites.source, source)
    snapshot_alive = any(s.moref == record.snapshot for s in source.all_snapshots())
    existing = replica_snapshot(vm, FIRST_POINT)
    if existing is None:
        existing = create_snapshot(
            sites.target,
            vm,
            FIRST_POINT,
            description=f"seed restore point of {source.name}",
            marker=RESTORE_POINT_MARKER,
            run_id=record.cycle,
        ).snapshot
    failpoints.point("seed-restore-point-taken")
    ids = dict(record.change_ids)
    frozen = snapshot_disks(sites.source, record.snapshot) if snapshot_alive else source.disks
    allocated = 0
    if snapshot_alive:
        at = next(s for s in source.all_snapshots() if s.moref == record.snapshot)
        allocated = sum(changed_areas(sites.source, source, at, key, ALL_ALLOCATED).total for key in ids)
    pairs = list(zip(by_position(frozen), by_position(vm.disks), strict=True))
    digests: tuple[tuple[int, str], ...] = ()
    if settings.verify and writer is not None:
        if not snapshot_alive:
            raise InvalidInput(f"the seed snapshot of {source.name} is gone: the seed cannot be verified")
        digests = verify_seed(
            sites, source, existing, pairs, reader, writer, at=record.snapshot, replica=vm.moref
        )
    disks = tuple(DiskState.frozen(s, r, change_id=ids[s.key]) for s, r in pairs)
    created = next(
        (s.created for s in source.all_snapshots() if s.moref == record.snapshot), existing.created
    )
    point = RestorePoint(
        id=FIRST_POINT,
        snapshot=existing.moref,
        created=created,
        quiesced=record.quiesced,
        bytes_moved=allocated,
        bytes_changed=allocated,
        digests=digests,
        change_ids=tuple((d.source_key, d.change_id) for d in disks),
    )
    state = ReplicaState(
        source=record.source,
        replica_uuid=vm.instance_uuid or "",
        target=target,
        settings=settings,
        disks=disks,
        restore_points=(point,),
        next_point=2,
    )
    write_options(lease, state=state, clear_journal=True, clear_seed=True)
    failpoints.point("seed-committed")
    if snapshot_alive:
        remove_snapshot(
            sites.source, source, next(s for s in source.all_snapshots() if s.moref == record.snapshot)
        )
    failpoints.point("seed-snapshot-removed")
    get_logger(vm=source.name, operation="protect").info("protected", replica=vm.name)
    return CycleResult(
        vm=source.name,
        replica=vm.name,
        restore_point=FIRST_POINT,
        created=created,
        quiesced=record.quiesced,
        bytes_changed=allocated,
        bytes_moved=allocated,
        full_resync=tuple(d.source_key for d in disks),
        resumed=False,
        seconds=time.monotonic() - started,
    )
