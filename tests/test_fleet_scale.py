"""A VM's cycle costs the same whatever the number of VMs in vCenter (issue 10, the 500-VM figures).

Two labs of their own (16 and 160 VMs, so the counters see no other test's
traffic) run the same policy job: the engine selects the VMs once (a pass
reads the inventory once), then one VM's job — placement, "is it
protected", the cycle — is counted: SOAP requests by method from the lab's
counters, and the objects the PropertyCollector sent back (counted as the
client receives them). Neither may grow with the inventory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import SoapAdapter
from structlog.testing import capture_logs

from tests.conftest import lab_connection, lab_vddk
from vsphere_replicator.errors import NotFound
from vsphere_replicator.inventory import get_vm
from vsphere_replicator.lab import LabControl, LabInfo, running_lab
from vsphere_replicator.policies import LiveEngine
from vsphere_replicator.policies.base import Selection
from vsphere_replicator.policies.fleet import profiler_deadlock_risk
from vsphere_replicator.policies.registry import get_policy
from vsphere_replicator.replication import ReplicaTarget, protect
from vsphere_replicator.replication.replica import _remember, find_replica

pytestmark = pytest.mark.lab

SIZES = (16, 160)
PROTECTED = ("lab-vm-0001", "lab-vm-0002", "lab-vm-0003")
TARGET = ReplicaTarget(datastore="secondary-ds")
RETRIEVALS = ("RetrievePropertiesEx", "ContinueRetrievePropertiesEx")


class ObjectsReceived:
    """Counts the objects every RetrievePropertiesEx answer brings to this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        invoke: Any = SoapAdapter.SoapStubAdapter.InvokeMethod

        def counting(stub: Any, mo: Any, info: Any, args: Any, outer: Any = None) -> Any:
            result = invoke(stub, mo, info, args, outer)
            if info.wsdlName in RETRIEVALS and result is not None:
                self.count += len(result.objects)
            return result

        monkeypatch.setattr(SoapAdapter.SoapStubAdapter, "InvokeMethod", counting)


def one_job_cost(lab: LabInfo, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], int]:
    """(SOAP requests by method, objects received) of one point-in-time job of lab-vm-0001."""
    control = LabControl(lab)
    policy: Any = get_policy("point-in-time")
    settings = policy.parse({"interval": "1h", "keep": 4})
    with lab_connection(lab) as conn:
        access = lab_vddk(conn)
        for vm in PROTECTED:
            protect(conn, vm, TARGET, replica_access=access)
        engine = LiveEngine(conn, replica_access=access)
        assert PROTECTED[0] in engine.select(Selection(names=("lab-vm-*",)))
        control.write_random(PROTECTED[0], offset=0, length=64 << 10, seed=7)
        with monkeypatch.context() as patch:
            received = ObjectsReceived(patch)
            control.reset_stats()
            summary = policy.run(engine, PROTECTED[0], TARGET, settings, None)
            methods = dict(control.stats()["methods"])
        assert summary.startswith("restore point ")
    return methods, received.count


@pytest.fixture(scope="module")
def small_lab() -> Iterator[LabInfo]:
    with running_lab(vms=SIZES[0], disk_size=1 << 20) as info:
        yield info


@pytest.fixture(scope="module")
def costs(small_lab: LabInfo) -> Iterator[dict[int, tuple[dict[str, int], int]]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        found = {SIZES[0]: one_job_cost(small_lab, monkeypatch)}
        with running_lab(vms=SIZES[1], disk_size=1 << 20) as big:
            found[SIZES[1]] = one_job_cost(big, monkeypatch)
    yield found


def counted(methods: dict[str, int]) -> dict[str, int]:
    """The calls a job makes, without WaitForUpdatesEx: how often a task wait polls depends on timing."""
    return {name: n for name, n in methods.items() if name != "WaitForUpdatesEx"}


def test_a_jobs_soap_calls_do_not_grow_with_the_inventory(costs: dict[int, Any]) -> None:
    small, big = (costs[n][0] for n in SIZES)
    assert counted(big) == counted(small)
    tasks = sum(n for name, n in small.items() if name.endswith("_Task"))
    assert big["WaitForUpdatesEx"] <= 2 * tasks + 4 and small["WaitForUpdatesEx"] <= 2 * tasks + 4
    assert "ContinueRetrievePropertiesEx" not in big


def test_a_jobs_objects_read_do_not_grow_with_the_inventory(costs: dict[int, Any]) -> None:
    """Before: every lookup read every VM (6 reads of the inventory a cycle: 1292 objects at 200 VMs)."""
    small, big = (costs[n][1] for n in SIZES)
    assert big == small
    assert big < 2 * SIZES[0]


def test_a_stale_replica_hint_falls_back_to_reading_every_replica(
    small_lab: LabInfo, costs: dict[int, Any]
) -> None:
    with lab_connection(small_lab) as conn:
        source, other = get_vm(conn, PROTECTED[0]), get_vm(conn, PROTECTED[1])
        theirs = find_replica(conn, other)
        mine = find_replica(conn, source)
        assert theirs is not None and mine is not None
        _remember(conn, (source.instance_uuid or "").lower(), theirs.vm.moref)
        with capture_logs() as logs:
            found = find_replica(conn, source)
        assert found is not None and found.vm.moref == mine.vm.moref
        stale = [e for e in logs if e["event"] == "replica_hint_stale"]
        assert stale and stale[0]["reason"] == "another source's replica"
        with capture_logs() as logs:
            assert find_replica(conn, source) == found  # remembered again: no second fallback
        assert not [e for e in logs if e["event"] == "replica_hint_stale"]


def test_a_job_with_a_stale_moref_finds_its_vm_by_name(small_lab: LabInfo, costs: dict[int, Any]) -> None:
    with lab_connection(small_lab) as conn:
        engine = LiveEngine(conn, replica_access=lab_vddk(conn))
        wanted, other = get_vm(conn, PROTECTED[0]), get_vm(conn, "lab-vm-0009")
        engine.remember(wanted.name, other.moref)  # as a job made before a rename would carry
        with capture_logs() as logs:
            assert engine.placement(wanted.name) == (wanted.host, wanted.datastores)
            assert engine.is_protected(wanted.name)
        assert [e["moref"] for e in logs if e["event"] == "vm_moref_stale"] == [other.moref]
        assert engine.moref_of(wanted.name) == wanted.moref


def test_a_name_no_vm_has_any_more_is_not_found_even_with_a_hint(
    small_lab: LabInfo, costs: dict[int, Any]
) -> None:
    with lab_connection(small_lab) as conn:
        engine = LiveEngine(conn, replica_access=lab_vddk(conn))
        engine.remember("renamed-away", get_vm(conn, "lab-vm-0010").moref)
        with pytest.raises(NotFound, match="renamed-away"):
            engine.placement("renamed-away")
        assert engine.moref_of("renamed-away") is None


def test_the_lookups_counted_are_the_ones_a_cycle_makes(costs: dict[int, Any]) -> None:
    """The job did run a cycle: a snapshot taken and the state committed, in both labs."""
    for methods, _ in costs.values():
        assert methods["CreateSnapshot_Task"] >= 1 and methods["ReconfigVM_Task"] >= 1
    assert Counter(counted(costs[SIZES[0]][0])) == Counter(counted(costs[SIZES[1]][0]))


@pytest.mark.parametrize(
    ("version", "profiling", "risk"),
    [
        ((3, 11, 7), True, True),  # this machine's Python: the 100-VM fleet run hung in it
        ((3, 11, 7), False, False),  # the profiler off: nothing calls _current_frames
        ((3, 11, 9), True, False),  # the fix (python/cpython#106883)
        ((3, 12, 1), True, True),
        ((3, 12, 3), True, False),
        ((3, 13, 0), True, False),
    ],
)
def test_a_worker_knows_when_dasks_profiler_can_deadlock_its_python(
    version: tuple[int, int, int], profiling: bool, risk: bool
) -> None:
    assert profiler_deadlock_risk(version, profiling=profiling) is risk
