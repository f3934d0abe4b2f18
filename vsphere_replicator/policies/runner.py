"""Drive a policy file: find each protection's VMs, run their cycles when due, within the limits.

One scheduler thread decides what starts; cycles run in a thread pool. The
scheduler alone counts slots (in total, per source host, per source
datastore), so limits hold without locks in the workers. A VM never runs
two cycles at once, and a failing VM is recorded and retried with backoff
while the others carry on. Stopping (the `stop` event, `max_cycles`) starts
nothing new and lets cycles in flight finish: a cycle is a transaction
that should not be cut in half.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vsphere_replicator.checks import check_callable, check_duration, check_int, check_type
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.logs import get_logger
from vsphere_replicator.policies.base import Engine, Policy, PolicyError
from vsphere_replicator.policies.policyfile import Limits, PolicyFile, Protection
from vsphere_replicator.policies.registry import get_policy
from vsphere_replicator.transport.throttle import Throttle

__all__ = ["RunRecord", "run_policies"]

_MAX_BACKOFF_DOUBLINGS = 6  # 30 s doubles up to 32 min between retries of a failing VM
_STOP_POLL = 1.0  # seconds: how long a stop request may wait while cycles are in flight


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One cycle of one VM: when it ran and how it ended. `error` is "Type: message" when `ok` is false."""

    vm: str
    protection: str
    policy: str
    started: datetime
    finished: datetime
    ok: bool
    summary: str
    error: str | None


@dataclass
class _Job:
    """Scheduler state of one VM (mutable, private to the scheduler thread)."""

    vm: str
    protection: Protection
    policy: Policy[Any]
    due: datetime
    runs: int = 0
    failures: int = 0
    placement: tuple[str, frozenset[str]] | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    finished: datetime
    summary: str
    error: str | None


class _Slots:
    """Cycles in flight, counted in total, per host and per datastore."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.total = 0
        self._hosts: Counter[str] = Counter()
        self._datastores: Counter[str] = Counter()

    def fits(self, host: str, datastores: frozenset[str]) -> bool:
        return (
            self.total < self._limits.total
            and self._hosts[host] < self._limits.per_host
            and all(self._datastores[ds] < self._limits.per_datastore for ds in datastores)
        )

    def take(self, host: str, datastores: frozenset[str]) -> None:
        self.total += 1
        self._hosts[host] += 1
        self._datastores.update(datastores)

    def release(self, host: str, datastores: frozenset[str]) -> None:
        self.total -= 1
        self._hosts[host] -= 1
        self._datastores.subtract(datastores)


def _local_now() -> datetime:
    return datetime.now().astimezone()


def _resolve(policy_file: PolicyFile, engine: Engine, now: datetime) -> list[_Job]:
    """Every selected VM as a job; a VM selected by two protections is an error naming both."""
    owners: dict[str, str] = {}
    conflicts: dict[str, list[str]] = defaultdict(list)
    policies: dict[str, Policy[Any]] = {}
    jobs: list[_Job] = []
    for protection in policy_file.protections:
        if protection.policy not in policies:
            policies[protection.policy] = get_policy(protection.policy)
        policy = policies[protection.policy]
        vms = engine.select(protection.selection)
        if not vms:
            get_logger(protection=protection.name).warning("protection_selects_no_vm")
        for vm in dict.fromkeys(vms):
            owner = owners.setdefault(vm, protection.name)
            if owner != protection.name:
                conflicts[vm] = conflicts[vm] or [owner]
                conflicts[vm].append(protection.name)
                continue
            due = policy.next_due(protection.settings, None, now)
            jobs.append(_Job(vm=vm, protection=protection, policy=policy, due=due))
    if conflicts:
        details = "; ".join(
            f"{vm!r} by {' and '.join(repr(p) for p in names)}" for vm, names in sorted(conflicts.items())
        )
        raise PolicyError(f"a VM may belong to one protection only, but {details}")
    return jobs


def run_policies(
    policy_file: PolicyFile,
    engine: Engine,
    *,
    once: bool,
    now: Callable[[], datetime] = _local_now,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
    max_cycles: int | None = None,
    max_sleep: float = 30.0,
    retry_after: timedelta = timedelta(seconds=30),
    on_record: Callable[[RunRecord], None] | None = None,
) -> list[RunRecord]:
    """Run the policy file's protections through `engine`; answer a record per cycle, in finishing order.

    `once=True` runs every selected VM exactly once, due or not, and
    returns. Otherwise it watches: each VM runs when its policy says it is
    due, until `stop` is set or `max_cycles` cycles (over all VMs) have
    started. Idle waits last at most `max_sleep` seconds, so a changed clock
    or a stop request is noticed. A failed cycle is retried after
    `retry_after`, doubling per consecutive failure.

    `now` gives wall-clock time for schedules (local time by default, which
    is what cron expressions are read in); `sleep` replaces idle waiting
    (default: wait on `stop`); `clock` and `sleep` also drive the bandwidth
    throttle. `on_record` sees each record as it is made, from this thread.
    Selection problems (a VM in two protections) raise PolicyError before
    any cycle starts; engine errors from `select` propagate unchanged.
    Wrong arguments (`max_cycles=0`, a `policy_file` that is a path) raise InvalidInput.
    """
    check_type(policy_file, PolicyFile, "policy_file (load it with load_policy_file)")
    check_type(once, bool, "once")
    if max_cycles is not None:
        check_int(max_cycles, "max_cycles", 1, 1_000_000_000)
    check_type(max_sleep, (int, float), "max_sleep")
    if not 0 < max_sleep <= 3600:
        raise InvalidInput(f"max_sleep must be above 0 and at most 3600 seconds, not {max_sleep}")
    check_duration(retry_after, "retry_after")
    check_callable(on_record, "on_record", optional=True)
    jobs = _resolve(policy_file, engine, now())
    limits = policy_file.limits
    throttle = (
        Throttle(limits.bandwidth, clock=clock, sleep=sleep or time.sleep)
        if limits.bandwidth is not None
        else None
    )
    slots = _Slots(limits)
    records: list[RunRecord] = []
    running: dict[Future[_Outcome], tuple[_Job, datetime, str, frozenset[str]]] = {}
    started = 0

    def idle(seconds: float) -> None:
        if sleep is not None:
            sleep(seconds)
        elif stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)

    def record(job: _Job, began: datetime, outcome: _Outcome) -> None:
        ok = outcome.error is None
        rec = RunRecord(
            vm=job.vm,
            protection=job.protection.name,
            policy=job.protection.policy,
            started=began,
            finished=outcome.finished,
            ok=ok,
            summary=outcome.summary,
            error=outcome.error,
        )
        records.append(rec)
        job.placement = None  # read again next time: the VM may have moved
        if ok:
            job.failures = 0
            job.due = job.policy.next_due(job.protection.settings, began, outcome.finished)
        else:
            job.failures += 1
            job.due = outcome.finished + retry_after * 2 ** min(job.failures - 1, _MAX_BACKOFF_DOUBLINGS)
        if on_record is not None:
            on_record(rec)

    def cycle(job: _Job) -> _Outcome:
        log = get_logger(vm=job.vm, protection=job.protection.name, policy=job.protection.policy)
        log.info("policy_cycle_started")
        try:
            summary = job.policy.run(engine, job.vm, job.protection.target, job.protection.settings, throttle)
        except Exception as exc:  # one VM's failure is recorded; the others carry on
            log.error("policy_cycle_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            return _Outcome(finished=now(), summary="", error=f"{type(exc).__name__}: {exc}")
        log.info("policy_cycle_finished", summary=summary)
        return _Outcome(finished=now(), summary=summary, error=None)

    def start_due(pool: ThreadPoolExecutor) -> None:
        nonlocal started
        current = now()
        busy = {job.vm for job, _, _, _ in running.values()}
        for job in sorted(jobs, key=lambda j: (j.due, j.vm)):
            if max_cycles is not None and started >= max_cycles:
                return
            if job.vm in busy or (job.runs > 0 if once else job.due > current):
                continue
            if job.placement is None:
                try:
                    where = engine.placement(job.vm)
                except Exception as exc:  # as a failed cycle: recorded, retried later, others go on
                    job.runs += 1
                    started += 1
                    error = f"{type(exc).__name__}: {exc}"
                    get_logger(vm=job.vm).error("policy_placement_failed", error=error)
                    record(job, current, _Outcome(finished=now(), summary="", error=error))
                    continue
                job.placement = (where[0], frozenset(where[1]))
            host, datastores = job.placement
            if not slots.fits(host, datastores):
                continue
            slots.take(host, datastores)
            job.runs += 1
            started += 1
            running[pool.submit(cycle, job)] = (job, current, host, datastores)

    def until_next_due() -> float:
        busy = {job.vm for job, _, _, _ in running.values()}
        current = now()
        waits = [
            (job.due - current).total_seconds() for job in jobs if job.vm not in busy and job.due > current
        ]
        return min([max_sleep, *waits])

    with ThreadPoolExecutor(max_workers=limits.total, thread_name_prefix="vr-policy") as pool:
        while True:
            stopping = (stop is not None and stop.is_set()) or (
                max_cycles is not None and started >= max_cycles
            )
            if not stopping:
                start_due(pool)
            if not running:
                if stopping or (once and all(job.runs for job in jobs)) or not jobs:
                    break
                if not once:
                    idle(max(0.0, until_next_due()))
                continue
            timeout = max_sleep if once else until_next_due()
            if stop is not None:
                timeout = min(timeout, _STOP_POLL)
            done, _ = wait(running, timeout=max(0.0, timeout), return_when=FIRST_COMPLETED)
            for future in done:
                job, began, host, datastores = running.pop(future)
                slots.release(host, datastores)
                record(job, began, future.result())
    return records
