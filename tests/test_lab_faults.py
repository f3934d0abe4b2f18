"""Injected faults: bounded, self-clearing, and seen as a client would see them."""

from __future__ import annotations

import http.client
import time
import xml.parsers.expat
from typing import Any

import pytest
import requests
from pyVmomi import vim, vmodl

from tests import labutil


def test_a_method_fault_fails_the_next_calls_then_clears(si: Any, control: Any, vm: Any) -> None:
    armed = control.fail_method("RetrievePropertiesEx", "SystemError", count=2)
    assert armed["remaining"] == 2
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
    )
    for _ in range(2):
        with pytest.raises(vmodl.fault.SystemError):
            pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    assert pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions()).objects
    assert control.faults() == []


def test_a_failing_snapshot_task_leaves_no_snapshot(control: Any, vm: Any) -> None:
    control.fail_method("CreateSnapshot_Task", "ApplicationQuiesceFault", message="quiesce failed")
    with pytest.raises(vim.fault.ApplicationQuiesceFault) as err:
        labutil.snapshot(vm, "q", quiesce=True)
    assert labutil.soap_message(err.value) == "quiesce failed"
    assert vm.snapshot is None


def test_expired_sessions_get_not_authenticated_until_login(lab: Any, control: Any, vm_name: str) -> None:
    client = labutil.connect(lab)
    vm = labutil.find_vm(client, vm_name)
    control.expire_sessions()
    with pytest.raises(vim.fault.NotAuthenticated):
        _ = vm.name
    client.content.sessionManager.Login(lab.user, lab.password)
    assert vm.name == vm_name
    labutil.disconnect(client)


def test_a_dropped_connection_fails_one_request_only(lab: Any, control: Any, vm_name: str) -> None:
    client = labutil.connect(lab)
    vm = labutil.find_vm(client, vm_name)
    control.drop_connections(count=1, path="sdk")
    with pytest.raises((http.client.HTTPException, ConnectionError, xml.parsers.expat.ExpatError)):
        _ = vm.name
    assert vm.name == vm_name
    labutil.disconnect(client)


def test_a_dropped_range_read_is_cut_short(
    lab: Any, si: Any, control: Any, off_vm: Any, off_vm_name: str
) -> None:
    control.write_random(off_vm_name, offset=0, length=1 << 20, seed=1)
    session = labutil.folder_session(lab, si)
    url, params = labutil.folder_url(lab, labutil.disks(off_vm)[0].backing.fileName)
    control.drop_connections(count=1, path="folder")
    with pytest.raises(requests.exceptions.RequestException):
        _ = session.get(url, params=params, headers={"Range": "bytes=0-1048575"}, timeout=10).content
    assert (
        len(session.get(url, params=params, headers={"Range": "bytes=0-1048575"}, timeout=10).content)
        == 1 << 20
    )


def test_slow_reads_delay_datastore_reads(lab: Any, si: Any, control: Any, off_vm: Any) -> None:
    session = labutil.folder_session(lab, si)
    file_name = labutil.disks(off_vm)[0].backing.fileName
    control.slow_reads(delay_ms=400, count=1)
    assert [(f["kind"], f["remaining"]) for f in control.faults()] == [("slow-reads", 1)]
    start = time.monotonic()
    first = labutil.read_range(session, lab, file_name, 0, 512)
    assert time.monotonic() - start >= 0.4
    assert control.faults() == []  # spent on that read: the next one is not delayed
    assert labutil.read_range(session, lab, file_name, 0, 512) == first


def test_bad_fault_requests_are_refused(control: Any) -> None:
    from vsphere_replicator.errors import InvalidInput
    from vsphere_replicator.lab import LabError

    with pytest.raises(LabError, match="not a vSphere fault"):
        control.fail_method("CreateSnapshot_Task", "NoSuchFault")
    with pytest.raises(LabError, match="count"):  # the lab's own check, behind the client's
        control.inject_fault("method", method="CreateSnapshot_Task", fault="SystemError", count=0)
    with pytest.raises(InvalidInput, match="count must be between 1 and 1000, not 0"):
        control.fail_method("CreateSnapshot_Task", "SystemError", count=0)
    assert control.faults() == []
