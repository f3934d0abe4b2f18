"""One VM's cycle as a job any `concurrent.futures.Executor` can run: a thread, a process, a dask worker.

`run_cycle_job(CycleJob)` is module-level and its argument is plain,
picklable data: the VM, its protection's policy name, replica target and
settings, the connection **profile name**, the transport — never a
password or a session. The worker that runs it logs in from its own
environment (replication/sessions.py) and keeps that session for the next
jobs (one per profile and transport, per process), so a proxy needs its
own credentials for the profile, its own path to the datastores (mounts or
VDDK), and the policy plugins installed.

Exactly one cycle per VM at a time, whatever the engine does with the job
(a retry after a worker died, a duplicate): the cycle takes the replica's
lease, so a second job for the same VM gets `Busy`, and a job retried after
its worker was killed takes over the dead holder's lease and resumes the
journaled cycle (replication/cycle.py).

Limits across a dask cluster: when `cluster` is set the job holds one of
dask's distributed `Semaphore`s for the whole cluster, one per source host
and one per source datastore, for the length of its cycle, so the
policy file's concurrency limits hold however many callers and workers
there are. Bandwidth: at most `limits.total` cycles run at once, each
throttled to `bandwidth / total`, so their sum never exceeds the cap.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vsphere_replicator.errors import ConnectionFailed, InvalidInput
from vsphere_replicator.logs import get_logger
from vsphere_replicator.policies.live import LiveEngine
from vsphere_replicator.policies.policyfile import Limits
from vsphere_replicator.policies.registry import get_policy
from vsphere_replicator.replication.sessions import ProfileSession, open_session
from vsphere_replicator.replication.settings import ReplicaTarget
from vsphere_replicator.transport.throttle import Throttle

__all__ = [
    "SCHEDULER_VARIABLE",
    "CycleJob",
    "JobResult",
    "dask_executor",
    "is_dask_executor",
    "profiler_deadlock_risk",
    "run_cycle_job",
    "vm_moref",
    "worker_id",
]

SCHEDULER_VARIABLE = "VSPHERE_REPLICATOR_SCHEDULER"  # the `run --scheduler` default
SEMAPHORE_PREFIX = "vsphere-replicator"
_SEMAPHORE_TIMEOUT = 24 * 3600.0  # seconds a job waits for a cluster slot before it fails


@dataclass(frozen=True, slots=True)
class CycleJob:
    """Everything a worker needs to run one cycle of one VM, and nothing secret.

    `host` and `datastores` are where the VM was when the job was made (the
    cluster-wide slots it takes); `cluster` says the job runs on a dask
    cluster and must hold its limits there. `moref` is the VM's as the
    caller last saw it: the worker reads that VM alone instead of every
    VM's name (a hint: a VM renamed or removed since is looked up by name).
    """

    vm: str
    protection: str
    policy: str
    target: ReplicaTarget
    settings: object
    profile: str | None
    transport: str
    limits: Limits
    host: str
    datastores: tuple[str, ...]
    cluster: bool = False
    moref: str | None = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """How a job ended: on which worker, when, with which summary or error ("Type: message")."""

    vm: str
    worker: str
    finished: datetime
    summary: str
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def worker_id() -> str:
    """Who runs this: the dask worker's name, else host:pid:thread."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            return str(distributed.get_worker().name)
        except ValueError:  # not inside a dask worker
            pass
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def is_dask_executor(executor: object) -> bool:
    """Whether `executor` is a dask.distributed client's `concurrent.futures` executor."""
    module = sys.modules.get("distributed.cfexecutor")
    return module is not None and isinstance(executor, module.ClientExecutor)


@contextmanager
def dask_executor(address: str, *, timeout: float = 30.0) -> Iterator[Executor]:
    """A `concurrent.futures.Executor` on the dask scheduler at `address` (tcp://HOST:PORT), closed after.

    Needs the `fleet` extra (dask.distributed). ConnectionFailed when no
    scheduler answers within `timeout` seconds.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise InvalidInput(
            "running on a dask cluster needs dask.distributed: pip install 'vsphere-replicator[fleet]'"
        ) from exc
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        message = f"no dask scheduler answered at {address} within {timeout:.0f} s: {exc}"
        raise ConnectionFailed(message) from exc
    try:
        yield client.get_executor(pure=False)
    finally:
        client.close()


_sessions: dict[tuple[str | None, str], tuple[ProfileSession, LiveEngine]] = {}
_sessions_lock = threading.Lock()
# A dask Semaphore refreshes its leases on a timer that keeps it alive: made once per process, shared
# by the job threads (each acquire adds a lease of its own, each release gives one back).
_semaphores: dict[tuple[str, int], Any] = {}


# CPython before these releases can deadlock a whole process when `sys._current_frames()` (dask's
# worker profiler calls it every 10 ms) runs a garbage collection while another thread ends: the
# GIL and the interpreter's thread-list lock taken in opposite orders (python/cpython#106883, fixed
# in 3.11.9 and 3.12.3). A worker so stuck answers no heartbeat and reads no SOAP answer.
_PROFILER_DEADLOCK_FIXED = {(3, 11): (3, 11, 9), (3, 12): (3, 12, 3)}


def profiler_deadlock_risk(version: tuple[int, ...] | None = None, *, profiling: bool | None = None) -> bool:
    """Whether this dask worker can hang in CPython's `_current_frames` deadlock (see above).

    True on a Python older than the fix with dask's worker profiler on
    (`distributed.worker.profile.enabled`, default on): turn it off
    (DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False) or use a newer Python.
    """
    running = tuple(version or sys.version_info[:3])
    fixed = _PROFILER_DEADLOCK_FIXED.get((running[0], running[1]))
    if (fixed is not None and running >= fixed) or running >= (3, 13):  # the package needs 3.11+
        return False
    if profiling is None:
        dask = sys.modules.get("dask")
        profiling = bool(dask.config.get("distributed.worker.profile.enabled", True)) if dask else False
    return profiling


def _engine(profile: str | None, transport: str) -> LiveEngine:
    """This process's engine for `profile` and `transport`: made on the first job, kept for the next."""
    key = (profile, transport)
    with _sessions_lock:
        if key not in _sessions:
            if "distributed" in sys.modules and profiler_deadlock_risk():
                get_logger(worker=worker_id()).warning(
                    "worker_may_deadlock",
                    python=".".join(map(str, sys.version_info[:3])),
                    fix="DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False, or Python >= 3.11.9 / 3.12.3",
                )
            opened = open_session(profile, transport=transport)
            engine = LiveEngine(
                opened.conn, replica_access=opened.replica_access, source_access=opened.source_access
            )
            _sessions[key] = (opened, engine)
            get_logger(profile=profile or "default").info("fleet_session_opened", worker=worker_id())
        return _sessions[key][1]


def vm_moref(engine: object, vm: str) -> str | None:
    """The moref a LiveEngine last saw for the VM named `vm` (None for other engines): a job's hint."""
    return engine.moref_of(vm) if isinstance(engine, LiveEngine) else None


def _local_now() -> datetime:
    return datetime.now().astimezone()


@contextmanager
def _cluster_slots(job: CycleJob) -> Iterator[None]:
    """Hold the cluster's semaphores for the job's cycle: in all, its host's, each of its datastores'.

    Always taken in that order (datastores sorted), so two jobs never wait on each other's slots.
    """
    if not job.cluster:
        yield
        return
    from distributed import Semaphore  # the fleet extra: only a dask worker gets here

    wanted = [(f"{SEMAPHORE_PREFIX}/total", job.limits.total)]
    wanted.append((f"{SEMAPHORE_PREFIX}/host/{job.host}", job.limits.per_host))
    for ds in sorted(job.datastores):
        wanted.append((f"{SEMAPHORE_PREFIX}/datastore/{ds}", job.limits.per_datastore))
    with ExitStack() as held:
        for base, leases in wanted:
            # dask refuses a semaphore of another size under the same name: the size is in the name, so
            # callers with the same limits share slots and one with other limits does not fail.
            name = f"{base}@{leases}"
            with _sessions_lock:  # one object per name and size in this process: each keeps a timer
                semaphore = _semaphores.get((name, leases))
                if semaphore is None:
                    semaphore = _semaphores[name, leases] = Semaphore(max_leases=leases, name=name)
            if not semaphore.acquire(timeout=_SEMAPHORE_TIMEOUT):
                raise TimeoutError(f"no free slot in {name} after {_SEMAPHORE_TIMEOUT:.0f} s")
            held.callback(semaphore.release)
        yield


def _throttle(limits: Limits) -> Throttle | None:
    """This cycle's share of the bandwidth cap: at most `total` cycles run at once."""
    if limits.bandwidth is None:
        return None
    return Throttle(max(1, limits.bandwidth // limits.total))


def run_cycle_job(job: CycleJob) -> JobResult:
    """Run one cycle of `job.vm` here, with this worker's own session; failures come back as the error.

    The one function a worker runs. `Busy` (another cycle of the VM runs
    somewhere) is a failed result like any other error: no second cycle.
    """
    worker = worker_id()
    log = get_logger(vm=job.vm, protection=job.protection, policy=job.policy, worker=worker)
    log.info("policy_cycle_started")
    try:
        engine = _engine(job.profile, job.transport)
        engine.remember(job.vm, job.moref)
        policy: Any = get_policy(job.policy)
        with _cluster_slots(job):
            summary = policy.run(engine, job.vm, job.target, job.settings, _throttle(job.limits))
    except Exception as exc:  # one VM's failure is its result; the worker carries on
        error = f"{type(exc).__name__}: {exc}"
        log.error("policy_cycle_failed", error=error, exc_info=True)
        return JobResult(vm=job.vm, worker=worker, finished=_local_now(), summary="", error=error)
    log.info("policy_cycle_finished", summary=summary)
    return JobResult(vm=job.vm, worker=worker, finished=_local_now(), summary=str(summary), error=None)
