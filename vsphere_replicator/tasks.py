"""Wait for vCenter tasks through the PropertyCollector (WaitForUpdatesEx).

Each thread has a private collector per connection (made once, reused),
and each wait puts one filter on it for the task's state, progress, result
and error and removes it after: concurrent waits never see each other's
updates, no `task.info` is polled in a loop, and a wait costs three round
trips besides the updates themselves.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from pyVmomi import vim, vmodl

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import NotFound, ReplicatorError, TaskFailed, TaskTimedOut, VSphereFault
from vsphere_replicator.faults import fault_message, fault_name
from vsphere_replicator.logs import get_logger

ProgressCallback = Callable[[int], None]
R = TypeVar("R")
_WATCHED = ["info.state", "info.progress", "info.result", "info.error"]
_MAX_WAIT_SECONDS = 30
# Faults that mean "another operation holds this VM or its files; try again later" (vSphere Web
# Services API reference: TaskInProgress, thrown when the VM is busy with another task;
# FileLocked, a file in use by another operation or host; SnapshotLocked, a snapshot create or
# delete on a VM whose snapshot is locked).
BUSY_FAULTS = frozenset({"TaskInProgress", "FileLocked", "SnapshotLocked"})


_local = threading.local()


def _thread_collectors() -> weakref.WeakKeyDictionary[Connection, Any]:
    collectors: weakref.WeakKeyDictionary[Connection, Any] | None = getattr(_local, "collectors", None)
    if collectors is None:
        collectors = weakref.WeakKeyDictionary()
        _local.collectors = collectors
    return collectors


def _collector(conn: Connection, task: Any, *, fresh: bool = False) -> tuple[Any, Any]:
    """This thread's collector for `conn` and a new filter on it watching `task`."""
    collectors = _thread_collectors()
    if fresh:
        collectors.pop(conn, None)

    def create() -> tuple[Any, Any]:
        pc = collectors.get(conn)
        if pc is None:
            pc = conn.content.propertyCollector.CreatePropertyCollector()
            collectors[conn] = pc
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=type(task), pathSet=_WATCHED, all=False)
            ],
        )
        return pc, pc.CreateFilter(spec, partialUpdates=False)

    try:
        return conn.call("watch a task", create)
    except NotFound:  # the session was renewed and the collector went with the old one
        collectors.pop(conn, None)
        return conn.call("watch a task", create)


@overload
def wait_for_task(
    conn: Connection,
    task: vim.Task,
    *,
    what: str,
    vm: str | None = None,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    expected_faults: tuple[str, ...] = (),
    returns: type[R],
) -> R: ...


@overload
def wait_for_task(
    conn: Connection,
    task: vim.Task,
    *,
    what: str,
    vm: str | None = None,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    expected_faults: tuple[str, ...] = (),
) -> object: ...


def wait_for_task(
    conn: Connection,
    task: vim.Task,
    *,
    what: str,
    vm: str | None = None,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    expected_faults: tuple[str, ...] = (),
    returns: type[Any] | None = None,
) -> object:
    """The task's result once it succeeds: of type `returns` when given (else a VSphereFault).

    Raises TaskFailed (with vCenter's fault type in `.fault` and its message)
    when the task ends in error, TaskTimedOut after `timeout` seconds.
    `on_progress` receives the percentage whenever it changes.
    """
    return _wait(conn, task, what, vm, timeout, on_progress, expected_faults, returns)


def _wait(
    conn: Connection,
    task: vim.Task,
    what: str,
    vm: str | None,
    timeout: float | None,
    on_progress: ProgressCallback | None,
    expected_faults: tuple[str, ...],
    returns: type[Any] | None,
) -> object:
    """wait_for_task; run_task calls it too."""
    log = get_logger(vm=vm, operation=what, task=task._moId)
    deadline = None if timeout is None else time.monotonic() + timeout
    info: dict[str, Any] = {}
    last_progress = -1
    pc, watch = _collector(conn, task)
    version = ""
    try:
        while True:
            wait = _MAX_WAIT_SECONDS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TaskTimedOut(f"{what}: task {task._moId} did not finish within {timeout} s", vm=vm)
                wait = max(1, min(wait, int(remaining + 0.999)))
            options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=wait)
            try:
                update = conn.call(what, functools.partial(pc.WaitForUpdatesEx, version, options))
            except NotFound:
                # The session was renewed and its collector went with the old one.
                pc, watch = _collector(conn, task, fresh=True)
                version = ""
                continue
            if update is None:
                # The wait ran out with no news: read the task itself, so an update that never
                # came (a collector that missed it) cannot keep us waiting for ever.
                current = conn.call(what, lambda: task.info)
                info.update(
                    {
                        "info.state": str(current.state),
                        "info.progress": current.progress,
                        "info.result": current.result,
                        "info.error": current.error,
                    }
                )
            else:
                version = update.version
                for filter_set in update.filterSet:
                    for obj in filter_set.objectSet:
                        for change in obj.changeSet:
                            info[change.name] = change.val
            progress = info.get("info.progress")
            if on_progress is not None and isinstance(progress, int) and progress != last_progress:
                last_progress = progress
                on_progress(progress)
            state = info.get("info.state")
            if state == "success":
                if on_progress is not None and last_progress != 100:
                    on_progress(100)
                log.debug("task_succeeded")
                result = info.get("info.result")
                if returns is not None and not isinstance(result, returns):
                    raise VSphereFault(
                        f"{what}: task {task._moId} gave a {type(result).__name__}, not a {returns.__name__}",
                        vm=vm,
                    )
                return result
            if state == "error":
                error = info.get("info.error")
                # pyVmomi hands a LocalizedMethodFault over as the fault itself.
                fault = error if isinstance(error, vmodl.MethodFault) else getattr(error, "fault", None)
                message = fault_message(fault) if fault is not None else "the task failed"
                name = fault_name(fault) if fault is not None else None
                if name in expected_faults:  # the caller handles it: not worth a warning
                    log.debug("task_failed", fault=name, message=message)
                else:
                    log.warning("task_failed", fault=name, message=message)
                raise TaskFailed(f"{what}: {message}", task=task._moId, vm=vm, fault=name)
    finally:
        with contextlib.suppress(ReplicatorError):  # it dies with its session anyway
            conn.call("drop a task watch", watch.DestroyPropertyFilter)


@overload
def run_task(
    conn: Connection,
    start: Callable[[], vim.Task],
    *,
    what: str,
    vm: str | None = None,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    expected_faults: tuple[str, ...] = (),
    returns: type[R],
) -> R: ...


@overload
def run_task(
    conn: Connection,
    start: Callable[[], vim.Task],
    *,
    what: str,
    vm: str | None = None,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    expected_faults: tuple[str, ...] = (),
) -> object: ...


def run_task(
    conn: Connection,
    start: Callable[[], vim.Task],
    *,
    what: str,
    vm: str | None = None,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    expected_faults: tuple[str, ...] = (),
    returns: type[Any] | None = None,
) -> object:
    """Start a task (never repeated on a network error: it may have started) and wait for it.

    The result is checked to be a `returns` (`vim.VirtualMachine` for a clone) and typed so;
    without `returns` it is an `object` the caller ignores. A failure whose fault is in
    `expected_faults` is raised as always but not logged as a warning.

    A VM busy with another operation (BUSY_FAULTS: TaskInProgress, FileLocked,
    SnapshotLocked, as the task's fault or the call's) is retried under the
    connection's RetryPolicy, with its backoff and bound; the last failure is
    raised once the tries run out.
    """
    log = get_logger(vm=vm, operation=what)
    quiet = (*expected_faults, *BUSY_FAULTS)

    def attempt() -> object:
        # Repeating a task start is safe only here: a task refused because the VM was busy did
        # nothing (vSphere checks the VM's lock before it acts), so starting it again is its
        # first run. A network error is not retried (idempotent=False): that task may be running.
        task = conn.call(what, start, idempotent=False, vm=vm)
        return _wait(conn, task, what, vm, timeout, on_progress, quiet, returns)

    try:
        return conn.retry.retrying(log, "task_busy_retry", retry_on=_is_busy, what=what)(attempt)
    except VSphereFault as exc:
        if exc.fault in BUSY_FAULTS and exc.fault not in expected_faults:
            log.warning("task_failed", fault=exc.fault, message=str(exc))
        raise


def _is_busy(exc: BaseException) -> bool:
    """Whether `exc` says the VM (or its files) was busy with another operation: worth another try."""
    return isinstance(exc, VSphereFault) and exc.fault in BUSY_FAULTS


def reconfigure_vm(
    conn: Connection, moref: str, spec: vim.vm.ConfigSpec, *, what: str, vm: str | None = None
) -> None:
    """Apply `spec` to VM `moref` and wait: every configuration change the library makes goes through here."""
    handle = conn.handle(vim.VirtualMachine, moref)
    run_task(conn, lambda: handle.ReconfigVM_Task(spec), what=what, vm=vm)
