"""Where each protected VM stands: its latest restore point's age against the target RPO."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from vsphere_replicator.checks import check_duration, check_type
from vsphere_replicator.connection import Connection
from vsphere_replicator.replication.replica import Replica, all_replicas


@dataclass(frozen=True, slots=True)
class ProtectionStatus:
    """One protected VM as plain data; `compliant` is None without a target RPO or once failed over."""

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


def _status(replica: Replica, now: datetime, target_rpo: timedelta | None) -> ProtectionStatus:
    state = replica.state
    if state is None:
        source = replica.seed.source.name if replica.seed else "?"
        return ProtectionStatus(
            vm=source,
            replica=replica.vm.name,
            state="seeding",
            restore_points=0,
            latest_point=None,
            latest_created=None,
            age_seconds=None,
            target_rpo_seconds=target_rpo.total_seconds() if target_rpo else None,
            compliant=False if target_rpo else None,
            last_bytes_moved=None,
            last_bytes_changed=None,
            last_error="protect was interrupted; run protect again",
        )
    latest = state.latest
    rpo = target_rpo or state.settings.target_rpo
    age = (now - latest.current_as_of).total_seconds()
    if state.promoted:
        label = "failed over"
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
    )


def protection_status(
    conn: Connection, *, target_rpo: timedelta | None = None, now: datetime | None = None
) -> tuple[ProtectionStatus, ...]:
    """Every protected VM, by name; `target_rpo` overrides the one each replication recorded."""
    check_type(conn, Connection, "conn")
    check_duration(target_rpo, "target_rpo", optional=True)
    check_type(now, datetime, "now", optional=True)
    moment = now or datetime.now(UTC)
    return tuple(sorted((_status(r, moment, target_rpo) for r in all_replicas(conn)), key=lambda s: s.vm))
