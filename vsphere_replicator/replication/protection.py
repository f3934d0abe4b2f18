"""Changing a protection after the fact: its recorded settings, or ending it (unprotect).

Both run under the replica's lease. Settings given to one `replicate` apply
to that run only; `update_settings` is the one way to change what `protect`
recorded, and says what it was before. `unprotect` ends the protection and
either deletes the replica or keeps it as an ordinary powered-off VM at its
newest restore point (snapshots consolidated, our options removed); a crash
part-way leaves the protection in place, and running it again finishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from vsphere_replicator.clone import destroy_vm
from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, StateError
from vsphere_replicator.inventory import VMSelector, find_vms
from vsphere_replicator.logs import get_logger
from vsphere_replicator.networks import check_networks
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.disks import remove_point_snapshot
from vsphere_replicator.replication.lease import Lease
from vsphere_replicator.replication.replica import (
    Replica,
    is_restore_point,
    refresh,
    replica_of,
    reread,
    revert_replica,
    settle_seed,
    sweep_source,
)
from vsphere_replicator.replication.settings import CycleSettings, ReplicaTarget, apply_overrides
from vsphere_replicator.replication.store import cleared_options, write_options
from vsphere_replicator.snapshots import find_snapshot


@dataclass(frozen=True, slots=True)
class SettingsChange(Shown):
    """A protection's recorded settings before and after a change, and which ones changed."""

    vm: str
    replica: str
    before: CycleSettings
    after: CycleSettings
    changed: tuple[str, ...]  # CycleSettings fields, and "networks" when the network mapping changed
    # The recovery network mapping (source port group, recovery port group) of the replica target.
    networks_before: tuple[tuple[str, str], ...] = ()
    networks_after: tuple[tuple[str, str], ...] = ()


def update_settings(
    conn: Connection,
    vm: str,
    *,
    dry_run: bool = False,
    networks: Sequence[tuple[str, str]] | None = None,
    **changes: Any,
) -> SettingsChange:
    """Change the settings `protect` recorded for `vm` (keep, max_age, target_rpo, quiesce, ...).

    `networks` replaces the target's recovery network mapping, (source port
    group, recovery port group) pairs, used by the next failover; every
    recovery port group must exist. Validated before anything is written
    (InvalidInput names the setting); retention applies them at the next
    cycle, never here. With `dry_run` nothing is written and no lease is
    taken: the result says what would change (Ansible's check mode).
    """
    wanted = None if networks is None else tuple((str(a), str(b)) for a, b in networks)
    if wanted is not None:
        ReplicaTarget(datastore="-", networks=wanted)  # the pairs' shape, checked as protect checks it
        check_networks(conn, (recovery for _, recovery in wanted), what="networks")
    found = replica_of(conn, vm, promoted=None)
    if dry_run:
        return _settings_change(found, vm, changes, wanted)
    with Lease(conn, found.vm.moref, operation="update settings", vm=found.vm.name) as lease:
        replica = settle_seed(conn, lease, reread(conn, found))
        change = _settings_change(replica, vm, changes, wanted)
        if change.changed:
            assert replica.state is not None
            target = replace(replica.state.target, networks=change.networks_after)
            write_options(lease, state=replace(replica.state, settings=change.after, target=target))
            get_logger(vm=vm, operation="update_settings").warning(
                "settings_changed", changed=list(change.changed)
            )
    return change


def _settings_change(
    replica: Replica, vm: str, changes: dict[str, Any], networks: tuple[tuple[str, str], ...] | None
) -> SettingsChange:
    """What `changes` (and `networks`, unless None) would do to the recorded settings, written nowhere."""
    replica.require_readable()
    if replica.state is None:
        raise StateError(f"protecting {vm} is unfinished: run protect again first", vm=vm)
    before = replica.state.settings
    after = apply_overrides(before, changes)
    changed = [f.name for f in fields(CycleSettings) if getattr(before, f.name) != getattr(after, f.name)]
    old = replica.state.target.networks
    new = old if networks is None else networks
    if dict(old) != dict(new):
        changed.append("networks")
    return SettingsChange(
        vm=vm,
        replica=replica.vm.name,
        before=before,
        after=after,
        changed=tuple(changed),
        networks_before=old,
        networks_after=new,
    )


@dataclass(frozen=True, slots=True)
class UnprotectResult(Shown):
    """What ending a protection did to the replica."""

    vm: str
    replica: str
    deleted: bool
    snapshots_removed: int
    failed_over: bool = False  # the replica ran as production: it was kept running, only our options went


def unprotect(conn: Connection, vm: str, *, delete_replica: bool = False) -> UnprotectResult:
    """End the protection of the VM named `vm`: delete its replica, or keep it as a plain VM.

    Refused while a failover or failback is in flight. A replica that was
    failed over to runs production: it can only be kept (its options are
    removed), never deleted here.
    """
    found = replica_of(conn, vm, promoted=None)
    log = get_logger(vm=vm, replica=found.vm.name, operation="unprotect")
    with Lease(conn, found.vm.moref, operation="unprotect", vm=found.vm.name) as lease:
        replica = settle_seed(conn, lease, reread(conn, found))
        state = replica.state
        if state is None:
            return _abandon_seed(conn, lease, replica, vm, delete_replica=delete_replica)
        if replica.recovery is not None:
            raise StateError(
                f"a {replica.recovery.operation} of {vm} is in progress (phase {replica.recovery.phase}): "
                "finish it before unprotecting",
                vm=vm,
            )
        if state.promoted and delete_replica:
            raise InvalidInput(
                f"{replica.vm.name} runs as {vm} since its failover: it is not deleted by unprotect", vm=vm
            )
        sources = find_vms(conn, VMSelector(instance_uuid=state.source.instance_uuid))
        if sources and not state.promoted:
            sweep_source(conn, sources[0])  # a cycle in flight leaves its snapshot there
            failpoints.point("unprotect-source-swept")
        if delete_replica:
            destroy_vm(conn, VMSelector(moref=replica.vm.moref))
            failpoints.point("unprotect-replica-deleted")
            log.warning("unprotected", replica_deleted=True)
            return UnprotectResult(vm=vm, replica=replica.vm.name, deleted=True, snapshots_removed=0)
        current = refresh(conn, replica)
        latest = state.latest.snapshot
        consolidated = not any(s.moref == latest for s in current.all_snapshots())  # by an earlier run
        dirty = replica.journal is not None or current.current_snapshot != latest
        if not state.promoted and not consolidated and dirty:
            # An unfinished cycle wrote into the replica: bring it back to its newest restore point.
            current = revert_replica(conn, lease, current, find_snapshot(current, moref=latest))
            write_options(lease, state=state, clear_journal=True)
            failpoints.point("unprotect-reverted")
        removed = 0
        for snap in list(current.all_snapshots()):
            if is_restore_point(snap):
                current = remove_point_snapshot(conn, current, snap)
                removed += 1
        failpoints.point("unprotect-points-removed")
        write_options(lease, extra=cleared_options())
        failpoints.point("unprotect-cleared")
    log.warning("unprotected", replica_deleted=False, snapshots_removed=removed)
    return UnprotectResult(
        vm=vm, replica=replica.vm.name, deleted=False, snapshots_removed=removed, failed_over=state.promoted
    )


def _abandon_seed(
    conn: Connection, lease: Lease, replica: Replica, vm: str, *, delete_replica: bool
) -> UnprotectResult:
    """Unprotect a VM whose protect never finished: its seed snapshot goes, and the copy too if asked."""
    assert replica.seed is not None
    sources = find_vms(conn, VMSelector(instance_uuid=replica.seed.source.instance_uuid))
    if sources:
        sweep_source(conn, sources[0])
    if delete_replica:
        destroy_vm(conn, VMSelector(moref=replica.vm.moref))
    else:
        write_options(lease, extra=cleared_options())
    get_logger(vm=vm, operation="unprotect").warning(
        "unfinished_seed_abandoned", replica_deleted=delete_replica
    )
    return UnprotectResult(vm=vm, replica=replica.vm.name, deleted=delete_replica, snapshots_removed=0)
