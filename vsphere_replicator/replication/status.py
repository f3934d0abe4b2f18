"""Where each protected VM stands: its latest restore point's age against the target RPO."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from vsphere_replicator.checks import check_duration, check_type
from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown, ShownRows
from vsphere_replicator.inventory import VMRef, VMSelector, find_vms, resolve_vm
from vsphere_replicator.replication.lease import is_live
from vsphere_replicator.replication.replica import Replica, all_replicas

FAILED_OVER = "failed over"
UNREADABLE = "state unreadable"


@dataclass(frozen=True, slots=True)
class ProtectionStatus(Shown):
    """One protected VM as plain data; `compliant` is None without a target RPO or once failed over.

    `operation` names a failover or failback in flight (and its phase), with
    `next_step` the command that continues it; `busy` names who holds the
    replica's lease right now.
    """

    vm: str
    replica: str
    state: str
    restore_points: int
    latest_point: str | None
    latest_created: datetime | None
    age_seconds: float | None
    target_rpo_seconds: float | None
    compliant: bool | None
    last_bytes_moved: int | None
    last_bytes_changed: int | None
    last_error: str | None
    operation: str | None = None
    next_step: str | None = None
    busy: str | None = None
    # The source VM's power state on its site's vCenter, "not found" there, or "unknown" when that
    # vCenter cannot be reached; None when it was not asked (one vCenter, or the target's alone).
    source_state: str | None = None

    _shown_columns: ClassVar[tuple[str, ...]] = (
        "vm",
        "replica",
        "state",
        "restore_points",
        "latest_point",
        "age_seconds",
        "target_rpo_seconds",
        "compliant",
        "last_error",
        "operation",
    )


class StatusList(ShownRows, tuple[ProtectionStatus, ...]):
    """What `protection_status` answers: a tuple of ProtectionStatus that shows itself as a table.

    `to_dataframe()` columns and dtypes: vm, replica, state (string);
    restore_points (int64); latest_point (string); latest_created
    (datetime64[ns, UTC]); age_seconds, target_rpo_seconds (float64, NaN when
    unknown); compliant (boolean, <NA> when unknown); last_bytes_moved,
    last_bytes_changed (Int64); last_error, operation, next_step, busy,
    source_state (string).
    """

    __slots__ = ()
    _noun = ("protected VM", "protected VMs")
    _frame_columns = (
        ("vm", "string"),
        ("replica", "string"),
        ("state", "string"),
        ("restore_points", "int64"),
        ("latest_point", "string"),
        ("latest_created", "datetime64[ns, UTC]"),
        ("age_seconds", "float64"),
        ("target_rpo_seconds", "float64"),
        ("compliant", "boolean"),
        ("last_bytes_moved", "Int64"),
        ("last_bytes_changed", "Int64"),
        ("last_error", "string"),
        ("operation", "string"),
        ("next_step", "string"),
        ("busy", "string"),
        ("source_state", "string"),
    )


def _continue_with(replica: Replica, vm: str) -> tuple[str | None, str | None]:
    journal = replica.recovery
    if journal is None:
        return None, None
    command = {
        "planned": f"vsphere-replicator failover {vm} --planned",
        "unplanned": f"vsphere-replicator failover {vm} --unplanned",
        "failback": f"vsphere-replicator failback {vm}",
    }[journal.kind]
    return f"{journal.operation}: {journal.phase}", command


def _without_points(
    replica: Replica,
    source: str,
    state: str,
    target_rpo: timedelta | None,
    error: str | None,
    busy: str | None,
) -> ProtectionStatus:
    """The status of a replica with no restore point to judge (unreadable, or still seeding)."""
    return ProtectionStatus(
        vm=source,
        replica=replica.vm.name,
        state=state,
        restore_points=0,
        latest_point=None,
        latest_created=None,
        age_seconds=None,
        target_rpo_seconds=target_rpo.total_seconds() if target_rpo else None,
        compliant=False if target_rpo else None,
        last_bytes_moved=None,
        last_bytes_changed=None,
        last_error=error,
        busy=busy,
    )


def _status(
    replica: Replica,
    now: datetime,
    target_rpo: timedelta | None,
    busy: str | None,
    names: Mapping[str, str],
) -> ProtectionStatus:
    state = replica.state
    if replica.error is not None:
        source = replica.seed.source.name if replica.seed else names.get(replica.source_uuid or "", "?")
        return _without_points(replica, source, UNREADABLE, target_rpo, str(replica.error), busy)
    if state is None:
        source = replica.seed.source.name if replica.seed else "?"
        error = None if busy else "protect was interrupted; run protect again"
        return _without_points(replica, source, "seeding", target_rpo, error, busy)
    latest = state.latest
    rpo = target_rpo or state.settings.target_rpo
    age = (now - latest.current_as_of).total_seconds()
    operation, next_step = _continue_with(replica, state.source.name)
    if state.promoted:
        label = FAILED_OVER
    elif operation is not None:
        label = "failover in flight"
    elif replica.journal is not None:
        label = "cycle in flight"
    else:
        label = "protected"
    return ProtectionStatus(
        vm=state.source.name,
        replica=replica.vm.name,
        state=label,
        restore_points=len(state.restore_points),
        latest_point=latest.id,
        latest_created=latest.current_as_of,
        age_seconds=age,
        target_rpo_seconds=rpo.total_seconds() if rpo else None,
        compliant=age <= rpo.total_seconds() if rpo and not state.promoted else None,
        last_bytes_moved=latest.bytes_moved,
        last_bytes_changed=latest.bytes_changed,
        last_error=state.last_error,
        operation=operation,
        next_step=next_step,
        busy=busy,
    )


def _busy(replica: Replica, now: datetime) -> str | None:
    holder = replica.holder
    return holder.describe() if holder is not None and is_live(holder, now) else None


def protection_status(
    conn: Connection,
    *,
    target_rpo: timedelta | None = None,
    now: datetime | None = None,
    source: Connection | None = None,
    source_unreachable: bool = False,
) -> StatusList:
    """Every protected VM, by name; `target_rpo` overrides the one each replication recorded.

    The answer is a StatusList: a tuple that shows itself as a table and has `to_dataframe()`.

    A replica whose state cannot be read is listed (state "state unreadable",
    the reason in `last_error`) without hiding the others. Everything is read
    from `conn`, the replicas' (target) vCenter. `source`, the source site's
    vCenter, adds each source VM's power state; `source_unreachable` says
    that vCenter could not be reached: the sources' states are "unknown",
    which is no error (the recovery site answers alone).
    """
    check_type(conn, Connection, "conn")
    check_duration(target_rpo, "target_rpo", optional=True)
    check_type(now, datetime, "now", optional=True)
    check_type(source, Connection, "source", optional=True)
    check_type(source_unreachable, bool, "source_unreachable")
    moment = now or datetime.now(UTC)
    replicas = all_replicas(conn)
    names: dict[str, str] = {}
    for replica in replicas:
        if replica.error is not None and replica.source_uuid:  # whose it is, though its state is damaged
            found_vms = find_vms(conn, VMSelector(instance_uuid=replica.source_uuid))
            if found_vms:
                names[replica.source_uuid] = found_vms[0].name
    found = [_status(r, moment, target_rpo, _busy(r, moment), names) for r in replicas]
    if source is not None or source_unreachable:
        found = [
            replace(f, source_state=_source_state(source, r)) for f, r in zip(found, replicas, strict=True)
        ]
    return StatusList(sorted(found, key=lambda s: (s.vm, s.replica)))


def _source_state(source: Connection | None, replica: Replica) -> str:
    if source is None:
        return "unknown"
    uuid = replica.state.source.instance_uuid if replica.state else replica.source_uuid
    if not uuid:
        return "unknown"
    vms = find_vms(source, VMSelector(instance_uuid=uuid))
    return vms[0].power_state if vms else "not found"


def protection_of(conn: Connection, vm: VMRef, *, now: datetime | None = None) -> ProtectionStatus | None:
    """The protection of one VM, or None when that VM exists and nothing protects it.

    `vm` is matched against the name each replica's state records first, so a
    source that is gone (failed over for good) is still found; otherwise it
    is looked up in vCenter (NotFound when no VM is called that) and matched
    by its name. A VM failed over to its replica answers state "failed over".
    This is what an idempotent caller asks before protecting, unprotecting,
    failing over or back: it changes nothing.
    """
    found = protection_status(conn, now=now)
    if isinstance(vm, str):
        named = [s for s in found if s.vm == vm]
        if named:
            return _one(named)
    name = resolve_vm(conn, vm).name
    return _one([s for s in found if s.vm == name])


def _one(found: list[ProtectionStatus]) -> ProtectionStatus | None:
    """A failed-over replica counts before one still seeding: it is the protection in force."""
    if not found:
        return None
    return sorted(found, key=lambda s: (s.state != FAILED_OVER, s.state == "seeding"))[0]
