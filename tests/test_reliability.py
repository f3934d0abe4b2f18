"""Nothing lost, nothing left down: a fault x step matrix over every operation that changes a VM.

For each operation (protect, replicate, test / planned / unplanned failover,
failback, unprotect) and each of its steps (failpoints), the operation is run
with one fault armed at exactly that step:

- kill: the process dies there (in-process: failpoints.Crash, which no
  clean-up handler sees; a few real `kill -9` runs are in
  test_reliability_kill.py);
- task-fault: the next mutating vSphere task (reconfigure, snapshot,
  power, clone, destroy, disk delete) fails with a vSphere fault;
- session-expired: vCenter forgets every session there;
- connection-dropped: the response to the next mutating call is cut half-way
  (vCenter runs the task; the client cannot know it did).

Then, where production is concerned, the state right after the fault must be
where the operation started or fully done (never both VMs off, never both
on); the same operation is run again without faults; and everything is
checked through plain pyVmomi and file hashes: the operation is fully done,
every restore point that should exist does and holds its bytes, no snapshot
of ours is left, the state is sound, no lease is held.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from tests.conftest import lab_vddk
from tests.replication_util import (
    JOURNAL_KEY,
    STATE_KEY,
    chain_hashes,
    option,
    point_hashes,
    snapshots,
    source_hashes,
)
from vsphere_replicator.connection import Connection, RetryPolicy, connect
from vsphere_replicator.errors import ReplicatorError
from vsphere_replicator.lab import LabControl, LabInfo, running_lab
from vsphere_replicator.replication import (
    CycleSettings,
    ReplicaTarget,
    VDDKDisks,
    failpoints,
    protect,
    replicate,
)
from vsphere_replicator.replication.failback import failback
from vsphere_replicator.replication.failover import (
    cleanup_test_failover,
    planned_failover,
    start_test_failover,
    unplanned_failover,
)
from vsphere_replicator.replication.lease import LeaseHolder, is_live
from vsphere_replicator.replication.protection import unprotect

pytestmark = pytest.mark.reliability

DISK = 8 << 20
LEASE_KEY = "vsphere_replicator.lease"
RECOVERY_KEY = "vsphere_replicator.recovery"
TARGET = ReplicaTarget(datastore="secondary-ds", networks=(("VM Network", "DR Network"),))
# What the lab fails at a "task-fault" step: the next call of any of these, once (one fault, not one each).
MUTATING = "|".join(
    (
        "ReconfigVM_Task",
        "CreateSnapshot_Task",
        "RemoveSnapshot_Task",
        "RevertToSnapshot_Task",
        "PowerOnVM_Task",
        "PowerOffVM_Task",
        "CloneVM_Task",
        "Destroy_Task",
        "DeleteVirtualDisk_Task",
    )
)
FAULTS = ("kill", "task-fault", "session-expired", "connection-dropped")
RESULTS: list[dict[str, Any]] = []


# -- the world each case runs in -------------------------------------------------


@dataclass
class World:
    lab: LabInfo
    conn: Connection
    si: Any
    control: LabControl
    access: VDDKDisks
    names: Iterator[str]
    expected: dict[str, list[str]] = field(default_factory=dict)  # "vm:restore point" -> disk hashes
    spares: dict[str, list[str]] = field(default_factory=dict)  # protected, clean VMs a case may reuse

    def vm(self, name: str) -> Any:
        return labutil.find_vm(self.si, name)

    def relogin(self) -> None:
        """The checks' own session, logged in again if a fault expired it."""
        try:
            self.si.content.sessionManager.currentSession  # noqa: B018 - a liveness probe
        except vim.fault.NotAuthenticated:
            self.si.content.sessionManager.Login(self.lab.user, self.lab.password)

    def write(self, vm: str, seed: int) -> None:
        """Guest writes on both disks: enough for checkpoints at 1 MiB."""
        self.control.write_random(vm, offset=(seed % 5) << 20, length=3 << 20, seed=seed, disk=0)
        self.control.write_random(vm, offset=(seed % 3) << 20, length=(1 << 20) + 4096, seed=seed + 1, disk=1)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with running_lab(vms=300, disks_per_vm=2, disk_size=DISK, cbt_window=2 << 20, cbt_block=64 << 10) as lab:
        si = labutil.connect(lab)
        conn = connect(
            lab.host,
            lab.user,
            lab.password,
            port=lab.port,
            ca_file=lab.ca_file,
            retry=RetryPolicy(sleep=lambda _: None),
        )
        names = (f"lab-vm-{i:04d}" for i in range(1, 301))
        yield World(
            lab=lab,
            conn=conn,
            si=si,
            control=LabControl(lab),
            access=lab_vddk(conn),
            names=names,
        )
        conn.close()
        labutil.disconnect(si)
    _report()


def _report() -> None:
    """With VR_RELIABILITY_REPORT=FILE, the cases and their outcomes as JSON (docs/reliability.md)."""
    target = os.environ.get("VR_RELIABILITY_REPORT")
    if target:
        worker = os.environ.get("PYTEST_XDIST_WORKER")  # each process writes its own part
        path = Path(target if worker is None else f"{target}.{worker}")
        path.write_text(json.dumps(RESULTS, indent=1, sort_keys=True))


def arm(world: World, fault: str) -> Callable[[], None]:
    def action() -> None:
        if fault == "kill":
            raise failpoints.Crash("simulated kill -9")
        if fault == "task-fault":
            world.control.fail_method(
                MUTATING, "InvalidState", count=1, message="injected by the reliability suite"
            )
        elif fault == "session-expired":
            world.control.expire_sessions()
        elif fault == "connection-dropped":  # the task runs in vCenter; the client sees the line break
            world.control.drop_connections(count=1, path="sdk", method=MUTATING)

    return action


def run_faulted(world: World, at: str, fault: str, operation: Callable[[], Any]) -> str:
    """Run `operation` with `fault` armed at failpoint `at`; 'crashed', 'failed', 'ok' or 'not-reached'."""
    reached: list[str] = []
    outcome = "ok"
    with failpoints.traced() as trace, failpoints.armed(at, arm(world, fault)):
        try:
            operation()
        except failpoints.Crash:
            outcome = "crashed"
        except ReplicatorError:
            outcome = "failed"
        reached = list(trace)
    world.control.clear_faults()
    world.relogin()
    if at not in reached:
        outcome = "not-reached"
    return outcome


def record(operation: str, at: str, fault: str, outcome: str, lost: int) -> None:
    RESULTS.append({"operation": operation, "step": at, "fault": fault, "outcome": outcome, "lost": lost})


# -- independent checks -------------------------------------------------------------


def state_of(vm: Any) -> dict[str, Any]:
    text = option(vm, STATE_KEY)
    assert text is not None, f"{vm.name} carries no replication state"
    data: dict[str, Any] = json.loads(text)
    return data


def our_transient(vm: Any) -> list[str]:
    return [n.name for n in snapshots(vm) if n.description.startswith("vsphere_replicator:snapshot:v1")]


def no_live_lease(vm: Any) -> bool:
    """No lease, or only one a killed operation left (which the next operation takes over)."""
    holder = LeaseHolder.decode(option(vm, LEASE_KEY))
    return holder is None or not is_live(holder, datetime.now(UTC))


def assert_no_leftovers(vm: Any) -> None:
    assert option(vm, JOURNAL_KEY) is None, f"{vm.name} keeps a cycle journal"
    assert option(vm, RECOVERY_KEY) is None, f"{vm.name} keeps a failover journal"
    assert no_live_lease(vm), f"{vm.name} keeps a live lease"


def check_protected(world: World, name: str, must_keep: set[str]) -> int:
    """The replica is sound; returns how many restore points that had to survive were lost."""
    source, replica = world.vm(name), world.vm(f"{name}-replica")
    data = state_of(replica)
    assert_no_leftovers(replica)
    assert no_live_lease(source)
    assert our_transient(source) == [], our_transient(source)
    points = [p["id"] for p in data["restore_points"]]
    assert len(set(points)) == len(points)
    assert sorted(n.name for n in snapshots(replica)) == sorted("vr-" + p for p in points)
    lost = len(must_keep - set(points))
    known = expected_for(world, name)
    for point in points:
        if point in known:
            assert point_hashes(world.lab, replica, point) == known[point], point
    # The newest point holds the source as it is now (nothing wrote since).
    assert point_hashes(world.lab, replica, points[-1]) == source_hashes(world.lab, source)
    return lost


def remember(world: World, name: str, point: str) -> None:
    world.expected[f"{name}:{point}"] = source_hashes(world.lab, world.vm(name))


def expected_for(world: World, name: str) -> dict[str, list[str]]:
    prefix = f"{name}:"
    return {k[len(prefix) :]: v for k, v in world.expected.items() if k.startswith(prefix)}


# -- the operations ------------------------------------------------------------------

PROTECT_STEPS = [
    "seed-snapshot-taken:1",
    "seed-replica-made:1",
    "seed-restore-point-taken:1",
    "seed-committed:1",
    "seed-snapshot-removed:1",
]
REPLICATE_STEPS = [
    "journal-begun:1",
    "source-snapshot-taken:1",
    "planned:1",
    "checkpoint:2",
    "disk-copied:1",
    "copied:1",
    "restore-point-taken:1",
    "committed:1",
    "source-snapshot-removed:1",
    "retention-recorded:1",
    "restore-point-pruned:1",
]
TEST_FAILOVER_STEPS = ["test-copy-made:1", "test-copy-nics-moved:1", "test-copy-running:1"]
PLANNED_STEPS = [
    "failover-begun:1",
    "committed:1",
    "failover-source-stopping:1",
    "failover-source-off:1",
    "confirmed:1",
    "failover-synced:1",
    "failover-nics-moved:1",
    "failover-macs-kept:1",
    "failover-powered-on:1",
    "failover-committed:1",
    "failover-points-dropped:1",
]
UNPLANNED_STEPS = [
    "failover-begun:1",
    "replica-reverted:1",
    "failover-reverted:1",
    "failover-nics-moved:1",
    "failover-powered-on:1",
    "failover-committed:1",
    "failover-points-dropped:1",
]
FAILBACK_STEPS = [
    "failback-begun:1",
    "failback-snapshot-taken:1",
    "failback-copied:1",
    "failback-point-taken:1",
    "failback-state-written:1",
    "failback-reversed:1",
    "failback-switched:1",  # the switch itself is a planned failover, whose steps have their own cases
    "failback-reprotect-snapshot-taken:1",
    "failback-reprotect-copied:1",
    "failback-state-written:2",
    "failback-original-cleared:1",
]
UNPROTECT_STEPS = ["unprotect-source-swept:1", "unprotect-points-removed:1", "unprotect-cleared:1"]


def protected(world: World, *, points: int = 2, keep: int = 2, reuse: str | None = None) -> str:
    """A VM protected with at least `points` restore points, each remembered byte for byte.

    With `reuse`, a VM that an earlier case of that kind left protected,
    clean and checked serves again: each case still starts from a sound
    protection and checks all it did, and the suite pays for fewer seeds.
    """
    spare = world.spares.get(reuse or "", [])
    if spare:
        return spare.pop()
    name = next(world.names)
    world.write(name, 1)
    protect(world.conn, name, TARGET, settings=CycleSettings(keep=keep, sample_areas=2))
    remember(world, name, "rp-000001")
    for n in range(2, points + 1):
        world.write(name, n * 7)
        replicate(world.conn, name, replica_access=world.access)
        remember(world, name, f"rp-{n:06d}")
    return name


def points_of(world: World, name: str) -> list[str]:
    return [p["id"] for p in state_of(world.vm(f"{name}-replica"))["restore_points"]]


FULL = os.environ.get("VR_RELIABILITY_FULL") == "1"


def cases(steps: list[str]) -> list[tuple[str, str]]:
    """A kill at every step; a task fault at every other step (the first and the last included);
    session expiry and a dropped response at the middle step. VR_RELIABILITY_FULL=1: every fault
    at every step, as docs/reliability.md reports."""
    chosen = []
    for index, at in enumerate(steps):
        chosen.append((at, "kill"))
        if FULL or index % 2 == 0 or index == len(steps) - 1:
            chosen.append((at, "task-fault"))
        if FULL or index == len(steps) // 2:
            chosen += [(at, "session-expired"), (at, "connection-dropped")]
    return chosen


@pytest.mark.parametrize(("at", "fault"), cases(PROTECT_STEPS))
def test_protect_survives(world: World, at: str, fault: str) -> None:
    name = next(world.names)
    world.write(name, 3)
    outcome = run_faulted(world, at, fault, lambda: protect(world.conn, name, TARGET))
    if outcome != "ok":
        protect(world.conn, name, TARGET)  # finishes the seed, or tidies what was left after it
    lost = check_protected(world, name, set())
    record("protect", at, fault, outcome, lost)
    assert outcome != "not-reached" or fault != "kill"


@pytest.mark.parametrize(("at", "fault"), cases(REPLICATE_STEPS))
def test_replicate_survives(world: World, at: str, fault: str) -> None:
    name = protected(world, reuse="replicate")
    before = points_of(world, name)
    world.write(name, 99)

    def cycle() -> Any:
        return replicate(
            world.conn, name, replica_access=world.access, chunk=1 << 20, checkpoint_every=1 << 20
        )

    outcome = run_faulted(world, at, fault, cycle)
    if outcome != "ok":
        cycle()
    remember(world, name, points_of(world, name)[-1])
    lost = check_protected(world, name, {before[-1]})  # keep=2: the newest point before stays
    record("replicate", at, fault, outcome, lost)
    assert lost == 0
    assert outcome != "not-reached", f"{at} was not reached"
    world.spares.setdefault("replicate", []).append(name)


@pytest.mark.parametrize(("at", "fault"), cases(TEST_FAILOVER_STEPS))
def test_test_failover_survives(world: World, at: str, fault: str) -> None:
    name = protected(world, reuse="test")
    before = points_of(world, name)
    outcome = run_faulted(world, at, fault, lambda: start_test_failover(world.conn, name))
    if outcome != "ok":
        start_test_failover(world.conn, name)
    copy = world.vm(f"{name}-failover-test")
    assert copy.runtime.powerState == "poweredOn"
    assert chain_hashes(world.lab, copy) == expected_for(world, name)[before[-1]]
    assert world.vm(name).runtime.powerState == "poweredOn"
    lost = check_protected(world, name, set(before))
    assert cleanup_test_failover(world.conn, name) == (f"{name}-failover-test",)
    record("test failover", at, fault, outcome, lost)
    assert lost == 0 and outcome != "not-reached"
    world.spares.setdefault("test", []).append(name)


def assert_safe(world: World, source: str, replica: str) -> None:
    """Right after a failover that failed: where it started, or switched; exactly one of them runs."""
    src, rep = world.vm(source), world.vm(replica)
    on = [v.name for v in (src, rep) if v.runtime.powerState == "poweredOn"]
    assert len(on) == 1, f"running after a failed failover: {on}"
    if rep.runtime.powerState == "poweredOff":
        assert not state_of(rep)["promoted"]


def check_switched(world: World, name: str, content: list[str]) -> None:
    replica = world.vm(f"{name}-replica")
    assert replica.runtime.powerState == "poweredOn"
    data = state_of(replica)
    assert data["promoted"] is True
    assert_no_leftovers(replica)
    assert snapshots(replica) == [], [s.name for s in snapshots(replica)]
    assert our_transient(world.vm(name)) == []
    assert source_hashes(world.lab, replica) == content


@pytest.mark.parametrize(("at", "fault"), cases(PLANNED_STEPS))
def test_planned_failover_survives(world: World, at: str, fault: str) -> None:
    name = protected(world, points=1)
    world.write(name, 123)  # after the last cycle: the failover must carry it
    content = source_hashes(world.lab, world.vm(name))

    def failover() -> Any:
        return planned_failover(world.conn, name, replica_access=world.access)

    outcome = run_faulted(world, at, fault, failover)
    if outcome == "failed":
        assert_safe(world, name, f"{name}-replica")
    if outcome != "ok":
        failover()
    check_switched(world, name, content)
    assert world.vm(name).runtime.powerState == "poweredOff"
    record("planned failover", at, fault, outcome, 0)
    assert outcome != "not-reached"


@pytest.mark.parametrize(("at", "fault"), cases(UNPLANNED_STEPS))
def test_unplanned_failover_survives(world: World, at: str, fault: str) -> None:
    name = protected(world, points=2, keep=3)
    labutil.wait(world.vm(name).PowerOffVM_Task())  # the primary site is down
    content = expected_for(world, name)["rp-000001"]

    def failover() -> Any:
        return unplanned_failover(world.conn, name, restore_point="rp-000001")

    outcome = run_faulted(world, at, fault, failover)
    lost = 0
    if outcome == "failed":
        replica = world.vm(f"{name}-replica")
        if replica.runtime.powerState == "poweredOn":  # up: only its bookkeeping is left to finish
            journal = json.loads(option(replica, RECOVERY_KEY) or "{}")
            assert state_of(replica)["promoted"] or journal.get("phase") == "promoting"
        else:
            points = {p["id"] for p in state_of(replica)["restore_points"]}
            lost = len({"rp-000001", "rp-000002"} - points)
            for point in points:
                assert point_hashes(world.lab, replica, point) == expected_for(world, name)[point]
    if outcome != "ok":
        failover()
    check_switched(world, name, content)
    assert world.vm(name).runtime.powerState == "poweredOff"  # untouched
    record("unplanned failover", at, fault, outcome, lost)
    assert lost == 0 and outcome != "not-reached"


@pytest.mark.parametrize(("at", "fault"), cases(FAILBACK_STEPS))
def test_failback_survives(world: World, at: str, fault: str) -> None:
    spare = world.spares.get("failback", [])
    name = spare.pop() if spare else protected(world, points=1)
    planned_failover(world.conn, name, replica_access=world.access)
    world.write(f"{name}-replica", 321)  # production ran on the replica meanwhile
    content = source_hashes(world.lab, world.vm(f"{name}-replica"))

    def back() -> Any:
        return failback(world.conn, name, replica_access=world.access)

    outcome = run_faulted(world, at, fault, back)
    if outcome == "failed":
        original, replica = world.vm(name), world.vm(f"{name}-replica")
        on = [v.name for v in (original, replica) if v.runtime.powerState == "poweredOn"]
        assert len(on) == 1, f"running after a failed failback: {on}"
    if outcome != "ok":
        back()
    original, replica = world.vm(name), world.vm(f"{name}-replica")
    assert original.runtime.powerState == "poweredOn" and replica.runtime.powerState == "poweredOff"
    assert source_hashes(world.lab, original) == content
    assert_no_leftovers(original)
    assert option(original, STATE_KEY) is None
    assert_no_leftovers(replica)
    data = state_of(replica)
    assert data["source"]["name"] == name and not data["promoted"]
    assert [s.name for s in snapshots(replica)] == ["vr-rp-000001"]
    assert point_hashes(world.lab, replica, "rp-000001") == content
    assert our_transient(original) == [] and snapshots(original) == []
    record("failback", at, fault, outcome, 0)
    assert outcome != "not-reached"
    world.expected[f"{name}:rp-000001"] = content  # protection restored: its history starts again
    world.spares.setdefault("failback", []).append(name)


@pytest.mark.parametrize(("at", "fault"), cases(UNPROTECT_STEPS))
def test_unprotect_survives(world: World, at: str, fault: str) -> None:
    name = protected(world)
    latest = expected_for(world, name)["rp-000002"]
    outcome = run_faulted(world, at, fault, lambda: unprotect(world.conn, name))
    if outcome != "ok":
        try:
            unprotect(world.conn, name)
        except ReplicatorError as exc:
            assert "is not protected" in str(exc), exc  # it had finished before the fault
    replica = world.vm(f"{name}-replica")
    assert option(replica, STATE_KEY) is None and no_live_lease(replica)
    assert snapshots(replica) == []
    assert source_hashes(world.lab, replica) == latest  # kept at its newest restore point
    assert our_transient(world.vm(name)) == []
    record("unprotect", at, fault, outcome, 0)
    assert outcome != "not-reached"
