"""Recovery plans: protected VMs replicated, tested and failed over together, tier by tier.

A plan is what each member's replica records (`ReplicaTarget.plan`, a
PlanMembership): its name, the VM's tier, and how the plan recovers. So a
plan is found on the recovery site's vCenter alone, as SRM's recovery plans
live at the recovery site.

- `replicate_plan` runs one cycle of every member at once. With a
  consistency group each cycle waits, once its source snapshot is taken,
  until every member's is: the group's snapshots fall in one short window,
  and their restore points share the window's group id.
- `failover_plan` picks the restore points first — with a consistency
  group the newest group every member holds (at or before `at`), else each
  VM's newest point at or before `at` — then brings tier 1 up, waits for
  its VMware Tools (or a delay), then tier 2, and so on. Each VM's failover
  is the ordinary journaled one, so running the plan again after a fault
  continues it: a VM already failed over is left as it is.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from vsphere_replicator.checks import check_choice, check_text, check_type
from vsphere_replicator.connection import Connection
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, NotFound, ReplicatorError, StateError, TaskTimedOut
from vsphere_replicator.inventory import resolve_vm, vm_object
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.replication.cycle import cycle_under_lease
from vsphere_replicator.replication.failback import failback
from vsphere_replicator.replication.failover import (
    FailoverResult,
    cleanup_test_failover,
    planned_failover,
    start_test_failover,
    unplanned_failover,
)
from vsphere_replicator.replication.replica import Replica, all_replicas
from vsphere_replicator.replication.settings import CycleResult, PlanMembership
from vsphere_replicator.replication.sites import Sites, sites_of
from vsphere_replicator.replication.state import ReplicaState, RestorePoint

PlanKind = Literal["test", "unplanned", "planned"]


@dataclass(frozen=True, slots=True)
class PlanReplication(Shown):
    """One cycle of each member of a plan: what each made, and which failed (VM, error)."""

    plan: str
    group: str | None
    cycles: tuple[CycleResult, ...]
    failed: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PlanResult(Shown):
    """A plan brought up tier by tier: each VM's failover, in the order they came up."""

    plan: str
    kind: str
    group: str | None
    tiers: tuple[tuple[str, ...], ...]
    vms: tuple[FailoverResult, ...]


def plan_members(conn: Connection, name: str) -> dict[int, list[Replica]]:
    """The replicas on this vCenter whose state names plan `name`, by tier; NotFound when none does."""
    check_text(name, "the recovery plan's name")
    tiers: dict[int, list[Replica]] = {}
    for replica in all_replicas(conn):
        member = _membership(replica)
        if member is not None and member.name == name:
            tiers.setdefault(member.tier, []).append(replica)
    if not tiers:
        raise NotFound(f"no protected VM is in recovery plan {name!r}")
    options = {_options(m) for members in tiers.values() for m in members}
    if len(options) > 1:
        raise StateError(
            f"the VMs of recovery plan {name!r} disagree on how it recovers ({sorted(options)}); "
            "set the same consistency group and wait on each (settings)"
        )
    for members in tiers.values():
        members.sort(key=lambda r: _state(r).source.name)
    return dict(sorted(tiers.items()))


def _membership(replica: Replica) -> PlanMembership | None:
    return replica.state.target.plan if replica.state is not None else None


def _state(replica: Replica) -> ReplicaState:
    assert replica.state is not None
    return replica.state


def _options(replica: Replica) -> tuple[bool, str, float]:
    member = _membership(replica)
    assert member is not None
    return (member.consistency_group, member.wait, member.delay_seconds)


def replicate_plan(
    conn: Connection | Sites,
    name: str,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    verify_access: DiskAccess | None = None,
    window: float = 300.0,
) -> PlanReplication:
    """One cycle of every VM of plan `name` at once; a consistency group's snapshots in one window.

    `window` bounds how long a group's first snapshot waits for the last:
    past it the group's cycles fail (their journals resume them later) and
    no restore point of the group is made, rather than points that do not
    share a moment.
    """
    sites = sites_of(conn)
    members = [r for tier in plan_members(sites.target, name).values() for r in tier]
    consistent = _options(members[0])[0]
    group = f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}" if consistent else None
    barrier = threading.Barrier(len(members), timeout=window) if consistent else None
    log = get_logger(operation="replicate_plan", plan=name)

    def snapshot_taken() -> None:
        assert barrier is not None
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            raise ReplicatorError(
                f"another VM of consistency group {name!r} failed or did not take its snapshot within "
                f"{window:.0f} s: this cycle does not make a restore point apart from the group"
            ) from None

    def one(replica: Replica) -> CycleResult:
        try:
            return cycle_under_lease(
                sites,
                _state(replica).source.name,
                replica_access=replica_access,
                source_access=source_access,
                verify_access=verify_access,
                group=group,
                on_snapshot=snapshot_taken if barrier is not None else None,
            )
        except BaseException:
            if barrier is not None:
                barrier.abort()  # the others stop waiting for a snapshot that will not come
            raise

    cycles, failed = [], []
    with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="vr-plan") as pool:
        futures = [(_state(r).source.name, pool.submit(one, r)) for r in members]
        for vm, future in futures:
            try:
                cycles.append(future.result())
            except ReplicatorError as exc:
                failed.append((vm, f"{type(exc).__name__}: {exc}"))
    log.info("plan_replicated", group=group, cycles=len(cycles), failed=[vm for vm, _ in failed])
    return PlanReplication(plan=name, group=group, cycles=tuple(cycles), failed=tuple(failed))


def recovery_points(
    states: Mapping[str, ReplicaState],
    *,
    consistent: bool,
    at: datetime | None = None,
    plan: str = "the plan",
    group: str | None = None,
) -> dict[str, RestorePoint]:
    """Where each VM comes up: one consistency group's points, or each VM's newest at or before `at`."""
    if consistent:
        groups: dict[str, dict[str, RestorePoint]] = {}
        for vm, state in states.items():
            for point in state.restore_points:
                if point.group is not None:
                    groups.setdefault(point.group, {})[vm] = point
        whole = {
            g: points
            for g, points in groups.items()
            if len(points) == len(states)
            and (at is None or all(p.created <= at for p in points.values()))
            and (group is None or g == group)
        }
        if not whole:
            when = f" at or before {at.isoformat()}" if at else ""
            raise NotFound(
                f"the VMs of {plan} share no consistency-group restore point{when}: "
                "replicate the plan (replicate --plan) to make one"
            )
        best = max(whole, key=lambda g: max(p.created for p in whole[g].values()))
        return whole[best]
    chosen = {}
    for vm, state in states.items():
        fitting = [p for p in state.restore_points if at is None or p.created <= at]
        if not fitting:
            raise NotFound(f"{vm} has no restore point at or before {at.isoformat() if at else 'now'}", vm=vm)
        chosen[vm] = fitting[-1]
    return chosen


def failover_plan(
    conn: Connection | Sites,
    name: str,
    *,
    kind: PlanKind,
    at: datetime | None = None,
    test_networks: Mapping[str, str] | None = None,
    force: bool = False,
    replica_access: DiskAccess | None = None,
    source_access: DiskAccess | None = None,
    tools_timeout: float = 600.0,
) -> PlanResult:
    """Bring plan `name` up tier by tier: a test (isolated copies), an unplanned or a planned failover.

    Test and unplanned failovers need only the recovery site (`conn` its
    vCenter, or `Sites`); `at` picks the restore points (see
    `recovery_points`). A planned failover syncs each VM first and needs
    `Sites` (or one vCenter) and `replica_access`.
    """
    check_choice(kind, ("test", "unplanned", "planned"), "kind")
    check_type(at, datetime, "at", optional=True)
    if kind == "planned" and replica_access is None:
        raise InvalidInput("a planned failover syncs every VM first: give replica_access")
    if kind == "planned" and at is not None:
        raise InvalidInput("a planned failover brings up the newest data: drop at")
    sites = sites_of(conn)
    tiers = plan_members(sites.target, name)
    members = [r for tier in tiers.values() for r in tier]
    consistent, wait, delay = _options(members[0])
    states = {_state(r).source.name: _state(r) for r in members}
    undone = {vm: s for vm, s in states.items() if not s.promoted}
    # A plan run again after a fault goes on at the group its first tiers came up at, whatever `at` says.
    started = {
        p.group
        for s in states.values()
        if s.promoted
        for p in s.restore_points
        if p.id == s.promoted_point and p.group is not None
    }
    if consistent and len(started) > 1:
        raise StateError(
            f"the VMs of recovery plan {name!r} already run at different groups: {sorted(started)}"
        )
    points = (
        recovery_points(
            undone,
            consistent=consistent,
            at=None if started else at,
            plan=f"recovery plan {name!r}",
            group=next(iter(started), None) if consistent else None,
        )
        if kind != "planned" and undone
        else {}
    )
    group = next((p.group for p in points.values()), None)
    log = get_logger(operation=f"{kind}_failover_plan", plan=name)
    done: list[FailoverResult] = []
    order = tuple(tuple(_state(r).source.name for r in tier) for tier in tiers.values())
    for index, tier in enumerate(order, start=1):
        for vm in tier:
            point = points.get(vm)
            if kind == "test":
                result = start_test_failover(
                    sites.target, vm, restore_point=point.id if point else None, test_networks=test_networks
                )
            elif kind == "unplanned":
                result = unplanned_failover(conn, vm, restore_point=point.id if point else None, force=force)
            else:
                assert replica_access is not None
                result = planned_failover(
                    conn, vm, replica_access=replica_access, source_access=source_access
                )
            log.info(
                "plan_vm_up", tier=index, vm=vm, running=result.running, restore_point=result.restore_point
            )
            done.append(result)
        if index < len(order):
            running = [r.running for r in done[-len(tier) :]]
            _hold_next_tier(sites.target, running, wait=wait, delay=delay, timeout=tools_timeout, tier=index)
    return PlanResult(plan=name, kind=kind, group=group, tiers=order, vms=tuple(done))


def failback_plan(
    conn: Connection | Sites,
    name: str,
    *,
    replica_access: DiskAccess,
    source_access: DiskAccess | None = None,
    datastore: str | None = None,
    tools_timeout: float = 600.0,
) -> PlanResult:
    """Bring every VM of plan `name` back to its original, tier by tier, as the plan boots them.

    Each VM goes through `failback` (reverse copy, switch, reprotect; see
    failback.py for `Sites`, `source_access` and `datastore`); between tiers
    the plan's wait (VMware Tools on the originals, or its delay) holds the
    next tier back. A VM already back is reported as such; a run cut short
    is carried on by running it again.
    """
    sites = sites_of(conn)
    tiers = plan_members(sites.target, name)
    members = [r for tier in tiers.values() for r in tier]
    _, wait, delay = _options(members[0])
    order = tuple(tuple(_state(r).source.name for r in tier) for tier in tiers.values())
    log = get_logger(operation="failback_plan", plan=name)
    done: list[FailoverResult] = []
    for index, tier in enumerate(order, start=1):
        for vm in tier:
            result = failback(
                conn, vm, replica_access=replica_access, source_access=source_access, datastore=datastore
            )
            assert result is not None  # switch=True: the whole failback
            log.info("plan_vm_back", tier=index, vm=vm, running=result.running)
            done.append(result)
        if index < len(order):
            back = [r.running for r in done[-len(tier) :]]
            _hold_next_tier(sites.source, back, wait=wait, delay=delay, timeout=tools_timeout, tier=index)
    return PlanResult(plan=name, kind="failback", group=None, tiers=order, vms=tuple(done))


def _hold_next_tier(
    conn: Connection, running: list[str], *, wait: str, delay: float, timeout: float, tier: int
) -> None:
    """The plan's wait before its next tier: VMware Tools in every VM just started, or its delay."""
    if wait == "tools":
        _wait_for_tools(conn, running, timeout=timeout, tier=tier)
    elif delay:
        time.sleep(delay)


def _wait_for_tools(conn: Connection, vms: list[str], *, timeout: float, tier: int) -> None:
    """Until every VM of a tier runs VMware Tools: the sign its guest is up, so the next tier may start."""
    handles = {vm: vm_object(conn, resolve_vm(conn, vm).moref) for vm in vms}
    deadline = time.monotonic() + timeout
    while True:
        waiting = [
            vm
            for vm, handle in handles.items()
            if conn.call("read VMware Tools' state", _tools_reader(handle)) != "guestToolsRunning"
        ]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise TaskTimedOut(
                f"tier {tier}: VMware Tools did not start in {', '.join(waiting)} within {timeout:.0f} s; "
                "the next tiers were not started (run the plan again once they are up)"
            )
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _tools_reader(handle: object) -> Callable[[], str | None]:
    def read() -> str | None:
        guest = getattr(handle, "guest", None)
        return getattr(guest, "toolsRunningStatus", None)

    return read


def cleanup_plan_test(conn: Connection, name: str) -> tuple[str, ...]:
    """Remove every test copy of the plan's VMs; returns their names."""
    removed: list[str] = []
    for tier in plan_members(conn, name).values():
        for replica in tier:
            removed.extend(cleanup_test_failover(conn, _state(replica).source.name))
    return tuple(removed)
