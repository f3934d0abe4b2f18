"""A VM runs one task at a time, and quiesced snapshots need VMware Tools: read with plain pyVmomi."""

from __future__ import annotations

from typing import Any

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests import labutil
from tests.replication_util import snapshots
from vsphere_replicator.errors import InvalidInput, LabError


def test_a_second_task_on_a_busy_vm_fails_with_task_in_progress(control: Any, vm: Any) -> None:
    control.slow_tasks("CreateSnapshot_Task", delay_ms=1500)
    first = vm.CreateSnapshot_Task(name="slow", description="", memory=False, quiesce=False)
    second = vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="meanwhile"))
    with pytest.raises(vim.fault.TaskInProgress) as err:
        WaitForTask(second)
    assert err.value.task._moId == first._moId
    assert labutil.soap_message(err.value) == "Another task is already in progress."
    assert second.info.state == "error"
    with pytest.raises(vim.fault.TaskInProgress):
        WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(first)
    assert vm.runtime.powerState == "poweredOn"
    assert [s.name for s in vm.snapshot.rootSnapshotList] == ["slow"]
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="after")))
    assert vm.config.annotation == "after"
    assert control.faults() == []


def test_lab_vms_run_tools_and_quiesce(vm: Any) -> None:
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"
    assert vm.guest.toolsStatus == "toolsOk"
    assert labutil.snapshot(vm, "q", quiesce=True).config is not None
    assert vm.snapshot.rootSnapshotList[0].quiesced is True


def test_quiesce_without_tools_fails_with_tools_unavailable(control: Any, vm: Any, vm_name: str) -> None:
    answer = control.set_tools(vm_name, "notRunning")
    assert answer["tools_running_status"] == "guestToolsNotRunning"
    assert vm.guest.toolsRunningStatus == "guestToolsNotRunning"
    assert vm.guest.toolsStatus == "toolsNotRunning"
    with pytest.raises(vim.fault.ToolsUnavailable) as err:
        labutil.snapshot(vm, "q", quiesce=True)
    assert "VMware Tools is not currently available" in labutil.soap_message(err.value)
    assert snapshots(vm) == []
    labutil.snapshot(vm, "crash-consistent")
    assert [(s.name, s.quiesced) for s in snapshots(vm)] == [("crash-consistent", False)]


def test_tools_not_installed_shows_and_refuses_quiesce(control: Any, vm: Any, vm_name: str) -> None:
    control.set_tools(vm_name, "notInstalled")
    assert vm.guest.toolsStatus == "toolsNotInstalled"
    assert vm.guest.toolsVersionStatus2 == "guestToolsNotInstalled"
    with pytest.raises(vim.fault.ToolsUnavailable):
        labutil.snapshot(vm, "q", quiesce=True)
    control.set_tools(vm_name, "running")
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"


def test_a_powered_off_vm_reports_tools_not_running_and_is_snapshotted_unquiesced(vm: Any) -> None:
    WaitForTask(vm.PowerOffVM_Task())
    assert vm.guest.toolsRunningStatus == "guestToolsNotRunning"
    labutil.snapshot(vm, "off", quiesce=True)  # vSphere quiesces a powered-on VM only
    assert vm.snapshot.rootSnapshotList[0].quiesced is False


@pytest.mark.parametrize("fault", ["FilesystemQuiesceFault", "ApplicationQuiesceFault"])
def test_an_armed_quiesce_fault_fails_a_quiesced_snapshot_only(control: Any, vm: Any, fault: str) -> None:
    control.fail_quiesce(fault)
    labutil.snapshot(vm, "crash-consistent")  # not quiesced: the fault waits for a quiesced one
    with pytest.raises(getattr(vim.fault, fault)):
        labutil.snapshot(vm, "q", quiesce=True)
    assert [s.name for s in vm.snapshot.rootSnapshotList] == ["crash-consistent"]
    assert control.faults() == []


def test_the_lab_refuses_bad_tools_and_task_faults(control: Any, vm_name: str) -> None:
    with pytest.raises(InvalidInput):
        control.set_tools(vm_name, "sleepy")
    with pytest.raises(InvalidInput):
        control.slow_tasks("RetrievePropertiesEx", delay_ms=10)
    with pytest.raises(InvalidInput):
        control.fail_quiesce("FileFault")
    with pytest.raises(LabError, match="no VM"):
        control.set_tools("no-such-vm", "running")
    with pytest.raises(LabError, match="ApplicationQuiesceFault"):
        control.inject_fault("quiesce", fault="SystemError")
