"""Drive a policy file: find each protection's VMs, run their cycles when due, within the limits.

One scheduler thread decides what starts; cycles run in a thread pool, or
as picklable jobs on any `concurrent.futures.Executor` given (a dask
cluster's, a process pool: see fleet.py). The
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
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from vsphere_replicator.checks import check_callable, check_duration, check_int, check_type
from vsphere_replicator.display import Shown, ShownRows
from vsphere_replicator.errors import InvalidInput, PolicyError
from vsphere_replicator.logs import get_logger
from vsphere_replicator.policies.base import Engine, Policy
from vsphere_replicator.policies.fleet import (
    CycleJob,
    JobResult,
    is_dask_executor,
    run_cycle_job,
    vm_moref,
    worker_id,
)
from vsphere_replicator.policies.policyfile import Limits, PolicyFile, Protection
from vsphere_replicator.policies.registry import get_policy
from vsphere_replicator.replication.sessions import TRANSPORTS
from vsphere_replicator.transport.throttle import Throttle

__all__ = ["RunRecord", "RunRecords", "run_policies"]

_MAX_BACKOFF_DOUBLINGS = 6  # 30 s doubles up to 32 min between retries of a failing VM
_STOP_POLL = 1.0  # seconds: how long a stop request may wait while cycles are in flight


@dataclass(frozen=True, slots=True)
class RunRecord(Shown):
    """One cycle of one VM: when, where and how it ended. `error` is "Type: message" when `ok` is false.

    `worker` names what ran the cycle: a dask worker's name, else host:pid:thread.
    """

    vm: str
    protection: str
    policy: str
    started: datetime
    finished: datetime
    ok: bool
    summary: str
    error: str | None
    worker: str | None = None

    _shown_columns = ("vm", "protection", "policy", "started", "duration_seconds", "ok", "summary", "error")

    @property
    def duration_seconds(self) -> float:
        """How long the cycle ran, in seconds."""
        return (self.finished - self.started).total_seconds()

    def _shown_extra(self) -> tuple[tuple[str, object], ...]:
        return (("duration_seconds", self.duration_seconds),)


class RunRecords(ShownRows, list[RunRecord]):
    """The records `run_policies` answers, in finishing order: a list shown as a table.

    `to_dataframe()` columns and dtypes: vm, protection, policy (string);
    started, finished (datetime64[ns, UTC]); duration_seconds (float64); ok
    (bool); summary, error (string, <NA> when the cycle succeeded).
    """

    __slots__ = ()
    _noun = ("cycle", "cycles")
    _frame_columns = (
        ("vm", "string"),
        ("protection", "string"),
        ("policy", "string"),
        ("started", "datetime64[ns, UTC]"),
        ("finished", "datetime64[ns, UTC]"),
        ("duration_seconds", "float64"),
        ("ok", "bool"),
        ("summary", "string"),
        ("error", "string"),
    )


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
    worker: str | None = None


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
            mine = replace(protection, target=policy_file.target_for(protection, vm))  # its recovery plan
            jobs.append(_Job(vm=vm, protection=mine, policy=policy, due=due))
    if conflicts:
        details = "; ".join(
            f"{vm!r} by {' and '.join(repr(p) for p in names)}" for vm, names in sorted(conflicts.items())
        )
        raise PolicyError(f"a VM may belong to one protection only, but {details}")
    return jobs


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A cycle submitted to the pool, with the slots it holds until it finishes."""

    job: _Job
    began: datetime
    host: str
    datastores: frozenset[str]


class _Scheduler:
    """One run of a policy file; every method but `_cycle` runs on the scheduler thread alone.

    `_cycle` runs on pool threads and touches only the engine, the throttle
    (thread-safe) and `now`; the jobs, slots and records are the scheduler
    thread's, so they need no lock. See `run_policies` for the arguments.
    """

    def __init__(
        self,
        policy_file: PolicyFile,
        engine: Engine,
        *,
        once: bool,
        now: Callable[[], datetime],
        sleep: Callable[[float], None] | None,
        clock: Callable[[], float],
        stop: threading.Event | None,
        max_cycles: int | None,
        max_sleep: float,
        retry_after: timedelta,
        on_record: Callable[[RunRecord], None] | None,
        executor: Executor | None = None,
        profile: str | None = None,
        transport: str = "mount",
    ) -> None:
        self.engine = engine
        self.executor = executor
        self.profile = profile
        self.transport = transport
        self.once = once
        self.now = now
        self.sleep = sleep
        self.stop = stop
        self.max_cycles = max_cycles
        self.max_sleep = max_sleep
        self.retry_after = retry_after
        self.on_record = on_record
        self.jobs = _resolve(policy_file, engine, now())
        self.limits = policy_file.limits
        self.throttle = (
            Throttle(self.limits.bandwidth, clock=clock, sleep=sleep or time.sleep)
            if self.limits.bandwidth is not None
            else None
        )
        self.slots = _Slots(self.limits)
        self.records: list[RunRecord] = []
        self.running: dict[Future[Any], _InFlight] = {}
        self.started = 0  # cycles started, counting placements that failed

    def run(self) -> list[RunRecord]:
        """Start what is due, wait for what runs, until done (once) or stopped; records in finishing order."""
        if self.executor is not None:
            return self._loop(self.executor)  # the caller's: it shuts it down, not us
        with ThreadPoolExecutor(max_workers=self.limits.total, thread_name_prefix="vr-policy") as pool:
            return self._loop(pool)

    def _loop(self, pool: Executor) -> list[RunRecord]:
        while True:
            stopping = self._stopping()
            if not stopping:
                self._start_due(pool)
            if not self.running:
                if stopping or (self.once and all(job.runs for job in self.jobs)) or not self.jobs:
                    break
                if not self.once:
                    self._idle(max(0.0, self._until_next_due()))
                continue
            timeout = self.max_sleep if self.once else self._until_next_due()
            if self.stop is not None:
                timeout = min(timeout, _STOP_POLL)
            done, _ = wait(self.running, timeout=max(0.0, timeout), return_when=FIRST_COMPLETED)
            for future in done:
                flight = self.running.pop(future)
                self.slots.release(flight.host, flight.datastores)
                self._record(flight.job, flight.began, self._outcome(flight.job, future))
        return self.records

    def _stopping(self) -> bool:
        """Asked to stop, or `max_cycles` started: start nothing new, let cycles in flight finish."""
        return (self.stop is not None and self.stop.is_set()) or self._cycles_used_up()

    def _cycles_used_up(self) -> bool:
        return self.max_cycles is not None and self.started >= self.max_cycles

    def _busy(self) -> set[str]:
        return {flight.job.vm for flight in self.running.values()}

    def _start_due(self, pool: Executor) -> None:
        """Submit every due job whose VM is idle and whose host and datastores have a free slot."""
        current = self.now()
        busy = self._busy()
        for job in sorted(self.jobs, key=lambda j: (j.due, j.vm)):
            if self._cycles_used_up():
                return
            if job.vm in busy or (job.runs > 0 if self.once else job.due > current):
                continue
            placement = job.placement or self._place(job, current)
            if placement is None:
                continue
            host, datastores = placement
            if not self.slots.fits(host, datastores):
                continue
            self.slots.take(host, datastores)
            job.runs += 1
            self.started += 1
            future = self._submit(pool, job, host, datastores)
            self.running[future] = _InFlight(job, current, host, datastores)

    def _submit(self, pool: Executor, job: _Job, host: str, datastores: frozenset[str]) -> Future[Any]:
        """The cycle on our own pool (sharing the engine), or as a picklable job on the caller's executor."""
        if self.executor is None:
            return pool.submit(self._cycle, job)
        cycle_job = CycleJob(
            vm=job.vm,
            protection=job.protection.name,
            policy=job.protection.policy,
            target=job.protection.target,
            settings=job.protection.settings,
            profile=self.profile,
            transport=self.transport,
            limits=self.limits,
            host=host,
            datastores=tuple(sorted(datastores)),
            cluster=is_dask_executor(pool),
            moref=vm_moref(self.engine, job.vm),
        )
        if cycle_job.cluster:  # a fresh key per cycle: dask would answer an equal call from its cache
            dask: Any = pool  # its submit also takes dask's own keywords
            key = f"vr-cycle-{job.vm}-{uuid.uuid4().hex}"
            submitted: Future[Any] = dask.submit(run_cycle_job, cycle_job, pure=False, key=key)
            return submitted
        return pool.submit(run_cycle_job, cycle_job)

    def _outcome(self, job: _Job, future: Future[Any]) -> _Outcome:
        """What a finished future says; a job the executor lost (a worker gone for good) is a failure."""
        try:
            result = future.result()
        except Exception as exc:  # the executor's failure, not the cycle's: recorded, retried later
            error = f"{type(exc).__name__}: {exc}"
            get_logger(vm=job.vm).error("policy_job_lost", error=error)
            return _Outcome(finished=self.now(), summary="", error=error)
        if isinstance(result, JobResult):
            return _Outcome(result.finished, result.summary, result.error, result.worker)
        assert isinstance(result, _Outcome)
        return result

    def _place(self, job: _Job, current: datetime) -> tuple[str, frozenset[str]] | None:
        """Where the VM is (host, datastores), kept until its next record; None when the engine failed.

        A failure counts as a failed cycle: recorded, retried after backoff, the others go on.
        """
        try:
            host, datastores = self.engine.placement(job.vm)
        except Exception as exc:  # as a failed cycle: recorded, retried later, others go on
            job.runs += 1
            self.started += 1
            error = f"{type(exc).__name__}: {exc}"
            get_logger(vm=job.vm).error("policy_placement_failed", error=error)
            self._record(job, current, _Outcome(finished=self.now(), summary="", error=error))
            return None
        job.placement = (host, frozenset(datastores))
        return job.placement

    def _cycle(self, job: _Job) -> _Outcome:
        """One cycle of one VM, on a pool thread; an exception becomes a failed outcome."""
        protection = job.protection
        worker = worker_id()
        log = get_logger(vm=job.vm, protection=protection.name, policy=protection.policy)
        log.info("policy_cycle_started")
        try:
            summary = job.policy.run(
                self.engine, job.vm, protection.target, protection.settings, self.throttle
            )
        except Exception as exc:  # one VM's failure is recorded; the others carry on
            log.error("policy_cycle_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            return _Outcome(self.now(), "", f"{type(exc).__name__}: {exc}", worker)
        log.info("policy_cycle_finished", summary=summary)
        return _Outcome(finished=self.now(), summary=summary, error=None, worker=worker)

    def _record(self, job: _Job, began: datetime, outcome: _Outcome) -> None:
        """Keep the record and set when the job is next due: its schedule, or backoff after a failure."""
        ok = outcome.error is None
        record = RunRecord(
            vm=job.vm,
            protection=job.protection.name,
            policy=job.protection.policy,
            started=began,
            finished=outcome.finished,
            ok=ok,
            summary=outcome.summary,
            error=outcome.error,
            worker=outcome.worker,
        )
        self.records.append(record)
        job.placement = None  # read again next time: the VM may have moved
        if ok:
            job.failures = 0
            job.due = job.policy.next_due(job.protection.settings, began, outcome.finished)
        else:
            job.failures += 1
            backoff = 2 ** min(job.failures - 1, _MAX_BACKOFF_DOUBLINGS)
            job.due = outcome.finished + self.retry_after * backoff
        if self.on_record is not None:
            self.on_record(record)

    def _until_next_due(self) -> float:
        """Seconds until the next idle VM is due, at most `max_sleep`."""
        busy = self._busy()
        current = self.now()
        waits = [
            (job.due - current).total_seconds()
            for job in self.jobs
            if job.vm not in busy and job.due > current
        ]
        return min([self.max_sleep, *waits])

    def _idle(self, seconds: float) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
        elif self.stop is not None:
            self.stop.wait(seconds)
        else:
            time.sleep(seconds)


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
    executor: Executor | None = None,
    profile: str | None = None,
    transport: str = "mount",
) -> RunRecords:
    """Run the policy file's protections through `engine`; answer a record per cycle, in finishing order.

    The records come as RunRecords, a list that shows itself as a table in a
    notebook and has `to_dataframe()`.

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

    `executor` (any `concurrent.futures.Executor`; default: a thread pool
    of `limits.total` threads sharing `engine`) runs each cycle as a
    picklable `CycleJob` through `run_cycle_job` instead: the worker logs in
    with connection profile `profile` (None: the default one) from its own
    environment and reaches disks by `transport` ("mount" or "vddk"); `engine`
    still selects and places VMs here. A dask client's executor
    (`client.get_executor()`) also holds the limits across the whole
    cluster with distributed semaphores (fleet.py); the caller keeps
    ownership of `executor` (it is not shut down).
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
    check_type(executor, Executor, "executor (a concurrent.futures.Executor)", optional=True)
    check_type(profile, str, "profile", optional=True)
    if transport not in TRANSPORTS:
        raise InvalidInput(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    scheduler = _Scheduler(
        policy_file,
        engine,
        once=once,
        now=now,
        sleep=sleep,
        clock=clock,
        stop=stop,
        max_cycles=max_cycles,
        max_sleep=max_sleep,
        retry_after=retry_after,
        on_record=on_record,
        executor=executor,
        profile=profile,
        transport=transport,
    )
    return RunRecords(scheduler.run())
