"""Tasks are awaited through WaitForUpdatesEx; failures carry vCenter's fault."""

from __future__ import annotations

from typing import Any

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim
from structlog.testing import capture_logs

from vsphere_replicator.connection import RetryPolicy, connect
from vsphere_replicator.errors import TaskFailed, VSphereFault
from vsphere_replicator.inventory import get_vm, vm_object
from vsphere_replicator.tasks import reconfigure_vm, run_task, wait_for_task


def test_progress_reaches_100_and_never_goes_back(conn: Any, si: Any, vm_name: str) -> None:
    seen: list[int] = []
    handle = vm_object(conn, get_vm(conn, vm_name).moref)
    dc = si.content.rootFolder.childEntity[0]
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(), powerOn=False)
    clone = run_task(
        conn,
        lambda: handle.CloneVM_Task(folder=dc.vmFolder, name=f"{vm_name}-t", spec=spec),
        what="clone",
        on_progress=seen.append,
        returns=vim.VirtualMachine,
    )
    assert isinstance(clone, vim.VirtualMachine) and clone._moId.startswith("vm-")
    assert seen and seen[-1] == 100 and seen == sorted(seen)


def test_a_failed_task_raises_with_the_fault_and_message(conn: Any, control: Any, vm_name: str) -> None:
    handle = vm_object(conn, get_vm(conn, vm_name).moref)
    control.fail_method("CreateSnapshot_Task", "FileFault", message="datastore is read-only")
    with pytest.raises(TaskFailed) as err:
        run_task(
            conn,
            lambda: handle.CreateSnapshot_Task(name="x", memory=False, quiesce=False),
            what=f"snapshot {vm_name}",
            vm=vm_name,
        )
    assert err.value.fault == "FileFault" and err.value.vm == vm_name
    assert "datastore is read-only" in str(err.value) and err.value.task.startswith("task-")


def test_waiting_survives_a_session_expiry(conn: Any, control: Any, vm_name: str) -> None:
    handle = vm_object(conn, get_vm(conn, vm_name).moref)
    task = conn.call(
        "snapshot",
        lambda: handle.CreateSnapshot_Task(name="x", memory=False, quiesce=False),
        idempotent=False,
    )
    control.expire_sessions()
    snapshot = wait_for_task(conn, task, what="snapshot", returns=vim.vm.Snapshot)
    assert snapshot._moId.startswith("snapshot-")


def test_a_task_result_of_another_type_than_asked_is_a_fault(conn: Any, vm_name: str) -> None:
    handle = vm_object(conn, get_vm(conn, vm_name).moref)
    with pytest.raises(
        VSphereFault, match=r"snapshot lab-vm-\d+: task task-\d+ gave a vim.vm.Snapshot, not a vim.Vir"
    ):
        run_task(
            conn,
            lambda: handle.CreateSnapshot_Task(name="x", memory=False, quiesce=False),
            what=f"snapshot {vm_name}",
            returns=vim.VirtualMachine,
        )
    assert [s.name for s in get_vm(conn, vm_name).all_snapshots()] == ["x"]  # the task itself ran


def test_a_task_refused_by_a_busy_vm_is_retried_until_the_first_task_ends(
    lab: Any, control: Any, vm: Any, vm_name: str
) -> None:
    control.slow_tasks("CreateSnapshot_Task", delay_ms=3000)
    first = vm.CreateSnapshot_Task(name="someone-else", description="", memory=False, quiesce=False)
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the backoff's wait: until the other client's task is over
        waits.append(seconds)
        WaitForTask(first)

    policy = RetryPolicy(sleep=sleep)
    with (
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file, retry=policy) as conn,
        capture_logs() as logs,
    ):
        spec = vim.vm.ConfigSpec(annotation="after the snapshot")
        reconfigure_vm(conn, get_vm(conn, vm_name).moref, spec, what="annotate", vm=vm_name)
    assert len(waits) == 1 and 0.5 <= waits[0] <= 0.5 + policy.jitter
    retries = [e for e in logs if e["event"] == "task_busy_retry"]
    assert [(e["attempt"], e["error"]) for e in retries] == [(1, "TaskFailed")]
    assert vm.config.annotation == "after the snapshot"
    assert first.info.state == "success"


def test_a_vm_busy_for_longer_than_the_retries_fails_with_task_in_progress(
    lab: Any, control: Any, vm: Any, vm_name: str
) -> None:
    control.slow_tasks("CreateSnapshot_Task", delay_ms=3000)
    first = vm.CreateSnapshot_Task(name="long", description="", memory=False, quiesce=False)
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, sleep=waits.append)
    with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file, retry=policy) as conn:
        spec = vim.vm.ConfigSpec(annotation="never")
        with pytest.raises(TaskFailed) as err:
            reconfigure_vm(conn, get_vm(conn, vm_name).moref, spec, what="annotate", vm=vm_name)
    assert err.value.fault == "TaskInProgress"
    assert len(waits) == 2 and waits[1] > waits[0]  # bounded, with backoff
    WaitForTask(first)
    assert vm.config.annotation != "never"
