"""config.changeVersion as vCenter keeps it: new at every change, checked by ReconfigVM_Task.

vSphere API reference (vim.vm.ConfigInfo, vim.vm.ConfigSpec): "Each change to
the configuration will update this value ... If specified, the changes will
only be applied if the current changeVersion matches"; a stale one is
vim.fault.ConcurrentAccess.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests import labutil

ESXI_FORM = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def reconfigure(vm: Any, **spec: Any) -> None:
    labutil.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(**spec)))


def option(key: str, value: str) -> Any:
    return vim.option.OptionValue(key=key, value=value)


def extra_config(vm: Any) -> dict[str, Any]:
    return {o.key: o.value for o in vm.config.extraConfig}


def entities(si: Any, kind: Any) -> list[Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def test_every_vm_has_a_change_version_in_esxi_form(si: Any) -> None:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[
            vmodl.query.PropertyCollector.ObjectSpec(
                obj=view,
                skip=True,
                selectSet=[
                    vmodl.query.PropertyCollector.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView
                    )
                ],
            )
        ],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.VirtualMachine, pathSet=["config.changeVersion"]
            )
        ],
    )
    versions: list[str] = []
    try:
        result = pc.RetrievePropertiesEx(
            [spec], vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=1000)
        )
        while result is not None:
            versions += [o.propSet[0].val for o in result.objects if o.propSet]
            result = pc.ContinueRetrievePropertiesEx(result.token) if result.token else None
    finally:
        view.Destroy()
    assert len(versions) >= 100
    assert all(ESXI_FORM.match(v) for v in versions), [v for v in versions if not ESXI_FORM.match(v)][:5]


def test_each_kind_of_configuration_change_gives_a_new_change_version(
    si: Any, control: Any, vm: Any, vm_name: str
) -> None:
    dr_network = next(n for n in entities(si, vim.Network) if n.name == "DR Network")
    other_host = next(h for h in entities(si, vim.HostSystem) if h != vm.runtime.host)
    snapshots: list[Any] = []

    def move_nic() -> None:
        nic = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard))
        nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName=dr_network.name, network=dr_network
        )
        change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)
        reconfigure(vm, deviceChange=[change])

    steps: list[tuple[str, Callable[[], object]]] = [
        ("extraConfig", lambda: reconfigure(vm, extraConfig=[option("vr.test", "1")])),
        ("a device edit", move_nic),
        ("CBT enabled", lambda: reconfigure(vm, changeTrackingEnabled=True)),
        ("snapshot create", lambda: snapshots.append(labutil.snapshot(vm, "one"))),
        ("revert", lambda: labutil.wait(snapshots[0].RevertToSnapshot_Task())),
        ("power on (new change ids)", lambda: labutil.wait(vm.PowerOnVM_Task())),
        ("CBT reset", lambda: control.cbt_reset(vm_name)),
        ("snapshot remove", lambda: labutil.wait(snapshots[0].RemoveSnapshot_Task(removeChildren=False))),
        ("snapshot create again", lambda: labutil.snapshot(vm, "two")),
        ("remove all snapshots", lambda: labutil.wait(vm.RemoveAllSnapshots_Task())),
        ("consolidate", lambda: labutil.wait(vm.ConsolidateVMDisks_Task())),
        (
            "relocate to another host",
            lambda: labutil.wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=other_host))),
        ),
        ("rename", lambda: labutil.wait(vm.Rename_Task(f"{vm_name}-renamed"))),
        ("rename back", lambda: labutil.wait(vm.Rename_Task(vm_name))),  # other tests count lab-vm-NNNN
    ]
    seen = [vm.config.changeVersion]
    unchanged = []
    for what, step in steps:
        step()
        version = vm.config.changeVersion
        if version in seen:
            unchanged.append(f"{what}: {version}")
        seen.append(version)
    assert unchanged == []
    assert all(ESXI_FORM.match(v) for v in seen)


def test_a_revert_brings_back_the_snapshots_options_under_a_new_version(vm: Any) -> None:
    reconfigure(vm, extraConfig=[option("vr.state", "at-snapshot")])
    snap = labutil.snapshot(vm, "s")
    frozen = snap.config.changeVersion
    reconfigure(vm, extraConfig=[option("vr.state", "later")])
    before = vm.config.changeVersion
    labutil.wait(snap.RevertToSnapshot_Task())
    assert extra_config(vm)["vr.state"] == "at-snapshot"
    assert vm.config.changeVersion not in (before, frozen)


def test_a_clone_has_a_change_version_of_its_own(vm: Any, vm_name: str) -> None:
    clone = labutil.wait(
        vm.CloneVM_Task(
            folder=vm.parent, name=f"{vm_name}-cv", spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec())
        )
    )
    assert ESXI_FORM.match(clone.config.changeVersion)
    assert clone.config.changeVersion != vm.config.changeVersion


def test_a_stale_change_version_is_concurrent_access_and_changes_nothing(vm: Any) -> None:
    stale = vm.config.changeVersion
    reconfigure(vm, annotation="first")
    current = vm.config.changeVersion
    with pytest.raises(vim.fault.ConcurrentAccess) as refused:
        reconfigure(
            vm,
            changeVersion=stale,
            annotation="second",
            numCPUs=8,
            changeTrackingEnabled=True,
            extraConfig=[option("vr.stale", "yes")],
        )
    message = labutil.soap_message(refused.value)
    assert stale in message and current in message
    assert vm.config.changeVersion == current
    assert vm.config.annotation == "first"
    assert vm.config.hardware.numCPU != 8
    assert not vm.config.changeTrackingEnabled
    assert "vr.stale" not in extra_config(vm)


def test_with_the_current_change_version_or_none_the_change_is_made(vm: Any) -> None:
    reconfigure(vm, changeVersion=vm.config.changeVersion, annotation="guarded")
    assert vm.config.annotation == "guarded"
    stale = vm.config.changeVersion
    reconfigure(vm, annotation="moved on")
    reconfigure(vm, annotation="unguarded")  # no changeVersion: no check, as in vSphere
    assert vm.config.annotation == "unguarded"
    assert vm.config.changeVersion != stale


def reconfigure_from(
    vm: Any, version: str, writer: str, barrier: threading.Barrier, outcomes: dict[str, str]
) -> None:
    """One client's read-modify-write: its change, guarded by the version it read."""
    spec = vim.vm.ConfigSpec(changeVersion=version, extraConfig=[option("vr.writer", writer)])
    barrier.wait()
    try:
        labutil.wait(vm.ReconfigVM_Task(spec))
        outcomes[writer] = "won"
    except vim.fault.ConcurrentAccess:
        outcomes[writer] = "ConcurrentAccess"
    except vim.fault.TaskInProgress:  # the winner's reconfigure still held the VM
        outcomes[writer] = "TaskInProgress"


def test_of_two_clients_reconfiguring_from_the_same_version_exactly_one_wins(lab: Any, vm_name: str) -> None:
    sessions = [labutil.connect(lab), labutil.connect(lab)]
    try:
        vms = [labutil.find_vm(si, vm_name) for si in sessions]
        for round_ in range(3):
            version = vms[0].config.changeVersion
            barrier = threading.Barrier(len(vms))
            outcomes: dict[str, str] = {}
            threads = [
                threading.Thread(target=reconfigure_from, args=(vm, version, str(i), barrier, outcomes))
                for i, vm in enumerate(vms)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            losers = [o for o in outcomes.values() if o != "won"]
            assert len(outcomes) == 2 and len(losers) == 1, f"round {round_}: {outcomes}"
            assert losers[0] in ("ConcurrentAccess", "TaskInProgress"), f"round {round_}: {outcomes}"
            winner = next(w for w, outcome in outcomes.items() if outcome == "won")
            assert extra_config(vms[0])["vr.writer"] == winner
    finally:
        for si in sessions:
            labutil.disconnect(si)
