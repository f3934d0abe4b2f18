"""The runner against a recording in-memory engine: limits hold under real threads, failures stay local."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import pytest

from vsphere_replicator.errors import NotFound, VSphereFault
from vsphere_replicator.policies import (
    PolicyError,
    PolicyFile,
    RunRecord,
    Selection,
    Throttle,
    parse_policy_file,
    run_policies,
)
from vsphere_replicator.replication.settings import CycleResult, CycleSettings, ReplicaTarget

T0 = datetime(2025, 3, 1, 10, 7, 30, tzinfo=UTC)
TIMEOUT = 5.0  # seconds: a bound on every wait, so a bug fails the test instead of hanging it


class LimitArgs(TypedDict):
    total: int
    per_host: int
    per_datastore: int


class RecordingEngine:
    """An engine whose cycles really run on the runner's threads and record how many overlap.

    Every cycle holds at `gate` (when one is given) and then for `hold`
    seconds, so the runner's concurrency is observable; VMs in `failing`
    raise as vCenter would.
    """

    def __init__(
        self,
        vms: Mapping[str, tuple[str, tuple[str, ...]]],
        *,
        gate: threading.Event | None = None,
        hold: float = 0.0,
        failing: frozenset[str] = frozenset(),
        unplaceable: frozenset[str] = frozenset(),
    ) -> None:
        self.vms = vms
        self.gate = gate
        self.hold = hold
        self.failing = failing
        self.unplaceable = unplaceable
        self.protected: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.throttles: list[Throttle | None] = []
        self.changed = threading.Condition()
        self.total = 0
        self.hosts: Counter[str] = Counter()
        self.datastores: Counter[str] = Counter()
        self.max_total = 0
        self.max_host = 0
        self.max_datastore = 0

    def select(self, selection: Selection) -> list[str]:
        return [vm for vm in self.vms if selection.matches(vm)]

    def placement(self, vm: str) -> tuple[str, tuple[str, ...]]:
        if vm in self.unplaceable:
            raise NotFound(f"VM {vm!r} vanished", vm=vm)
        return self.vms[vm]

    def is_protected(self, vm: str) -> bool:
        with self.changed:
            return vm in self.protected

    def protect(self, vm: str, target: ReplicaTarget, cycle: CycleSettings) -> CycleResult:
        return self._cycle(vm, "protect", None)

    def replicate(self, vm: str, cycle: CycleSettings, throttle: Throttle | None) -> CycleResult:
        return self._cycle(vm, "replicate", throttle)

    def clone(self, vm: str, target: ReplicaTarget, keep: int, name: str) -> str:
        self._cycle(vm, "clone", None)
        return name

    def _cycle(self, vm: str, kind: str, throttle: Throttle | None) -> CycleResult:
        host, datastores = self.vms[vm]
        with self.changed:
            self.calls.append((kind, vm))
            self.throttles.append(throttle)
            self.total += 1
            self.hosts[host] += 1
            self.datastores.update(datastores)
            self.max_total = max(self.max_total, self.total)
            self.max_host = max(self.max_host, self.hosts[host])
            self.max_datastore = max([self.max_datastore, *(self.datastores[d] for d in datastores)])
            self.changed.notify_all()
        try:
            if self.gate is not None:
                assert self.gate.wait(TIMEOUT), "the test never opened the gate"
            time.sleep(self.hold)
            if vm in self.failing:
                raise VSphereFault(f"datastore full while replicating {vm}", vm=vm, fault="NoDiskSpace")
            with self.changed:
                self.protected.add(vm)
            return CycleResult(vm, f"{vm}-replica", "rp", T0, False, 10, 10, (), False, self.hold)
        finally:
            with self.changed:
                self.total -= 1
                self.hosts[host] -= 1
                self.datastores.subtract(datastores)

    def wait_running(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.total >= count, TIMEOUT), (
                f"only {self.total} ran at once"
            )


def policy_file(
    *protections: tuple[str, str, str],
    total: int = 4,
    per_host: int = 2,
    per_datastore: int = 2,
    extra: str = "",
) -> PolicyFile:
    """A policy file of (name, names glob, policy + settings) protections."""
    lines = [
        "version: 1",
        f"limits: {{total: {total}, per_host: {per_host}, per_datastore: {per_datastore}{extra}}}",
        "protections:",
    ]
    for name, glob, policy in protections:
        lines += [
            f"  - name: {name}",
            f"    select: {{names: ['{glob}']}}",
            "    target: {datastore: secondary-ds}",
            f"    {policy}",
        ]
    return parse_policy_file("\n".join(lines) + "\n", "test.yaml")


def pit(settings: str = "interval: 15m") -> str:
    return f"policy: point-in-time\n    settings: {{{settings}}}"


def run_in_thread(fn: Callable[[], list[RunRecord]]) -> tuple[threading.Thread, list[list[RunRecord]]]:
    out: list[list[RunRecord]] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize(
    ("limits", "layout", "peak"),
    [
        pytest.param(
            {"total": 3, "per_host": 3, "per_datastore": 3},
            lambda i: (f"esx-{i}", (f"ds-{i}",)),
            3,
            id="total-binds",
        ),
        pytest.param(
            {"total": 6, "per_host": 2, "per_datastore": 6},
            lambda i: (f"esx-{i % 2}", (f"ds-{i}",)),
            4,
            id="per-host-binds",
        ),
        pytest.param(
            {"total": 6, "per_host": 6, "per_datastore": 1},
            lambda i: (f"esx-{i}", (f"ds-{i % 4}", f"ds-{(i + 2) % 4}")),
            2,
            id="per-datastore-binds",
        ),
    ],
)
def test_limits_hold_under_real_concurrency(
    limits: LimitArgs, layout: Callable[[int], tuple[str, tuple[str, ...]]], peak: int
) -> None:
    gate = threading.Event()
    engine = RecordingEngine({f"vm-{i:02d}": layout(i) for i in range(12)}, gate=gate, hold=0.01)
    plan = policy_file(("all", "vm-*", pit()), **limits)
    thread, out = run_in_thread(lambda: run_policies(plan, engine, once=True))
    engine.wait_running(peak)  # the first wave is in flight, held at the gate
    gate.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    (records,) = out
    assert sorted(r.vm for r in records) == sorted(engine.vms)
    assert all(r.ok for r in records)
    assert engine.max_total == peak
    assert engine.max_total <= limits["total"]
    assert engine.max_host <= limits["per_host"]
    assert engine.max_datastore <= limits["per_datastore"]


def test_one_failing_vm_does_not_stop_the_others() -> None:
    vms = {name: (f"esx-{name}", (f"ds-{name}",)) for name in ("a-1", "a-2", "a-3", "a-4")}
    engine = RecordingEngine(vms, failing=frozenset({"a-2"}), unplaceable=frozenset({"a-4"}))
    records = run_policies(policy_file(("a", "a-*", pit())), engine, once=True)
    by_vm = {r.vm: r for r in records}
    assert sorted(by_vm) == ["a-1", "a-2", "a-3", "a-4"]
    assert by_vm["a-1"].ok and by_vm["a-3"].ok
    assert by_vm["a-1"].summary.startswith("restore point rp on a-1-replica (seeded,")
    failed = by_vm["a-2"]
    assert (failed.ok, failed.summary, failed.error) == (
        False,
        "",
        "VSphereFault: datastore full while replicating a-2",
    )
    assert (failed.protection, failed.policy) == ("a", "point-in-time")
    assert by_vm["a-4"].error == "NotFound: VM 'a-4' vanished"
    assert sorted(vm for _, vm in engine.calls) == ["a-1", "a-2", "a-3"]


def test_a_vm_in_two_protections_is_refused_before_anything_runs() -> None:
    engine = RecordingEngine(
        {"db-01": ("esx", ("ds",)), "db-02": ("esx", ("ds",)), "web-01": ("esx", ("ds",))}
    )
    plan = policy_file(("databases", "db-*", pit()), ("everything", "*", pit()), ("web", "web-*", pit()))
    with pytest.raises(PolicyError) as exc:
        run_policies(plan, engine, once=True)
    assert str(exc.value) == (
        "a VM may belong to one protection only, but 'db-01' by 'databases' and 'everything'; "
        "'db-02' by 'databases' and 'everything'; 'web-01' by 'everything' and 'web'"
    )
    assert engine.calls == []


def test_once_runs_every_vm_even_when_not_due_and_seeds_first() -> None:
    engine = RecordingEngine({"a": ("esx", ("ds",)), "b": ("esx", ("ds",))})
    plan = policy_file(("all", "*", pit("cron: '0 2 * * *'")))
    run_policies(plan, engine, once=True)
    run_policies(plan, engine, once=True)
    assert sorted(engine.calls) == [
        ("protect", "a"),
        ("protect", "b"),
        ("replicate", "a"),
        ("replicate", "b"),
    ]


def test_the_bandwidth_cap_is_one_throttle_shared_by_every_transfer() -> None:
    engine = RecordingEngine({"a": ("esx-1", ("ds-1",)), "b": ("esx-2", ("ds-2",))})
    engine.protected.update({"a", "b"})
    run_policies(policy_file(("all", "*", pit()), extra=", bandwidth: 100MiB/s"), engine, once=True)
    first, second = engine.throttles
    assert first is second and first is not None
    assert first.rate == 100 << 20


class FakeTime:
    """Wall-clock time that advances only when the runner sleeps; every sleep recorded."""

    def __init__(self, start: datetime) -> None:
        self.current = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self.current

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.current += timedelta(seconds=seconds)


def test_watch_mode_runs_each_vm_when_its_schedule_says() -> None:
    fake = FakeTime(T0)
    engine = RecordingEngine({"web-01": ("esx-1", ("ds-1",)), "db-01": ("esx-2", ("ds-2",))})
    plan = policy_file(("web", "web-*", pit("interval: 15m")), ("db", "db-*", pit("cron: '0 * * * *'")))
    records = run_policies(
        plan, engine, once=False, now=fake.now, sleep=fake.sleep, max_cycles=6, max_sleep=300
    )
    started = sorted((r.started, r.vm) for r in records)
    at = T0.replace
    assert started == [
        (T0, "db-01"),
        (T0, "web-01"),
        (at(minute=22), "web-01"),
        (at(minute=37), "web-01"),
        (at(minute=52), "web-01"),
        (at(hour=11, minute=0, second=0), "db-01"),
    ]
    assert max(fake.sleeps) <= 300  # bounded: 15 minutes are slept in several steps
    assert sum(fake.sleeps) == pytest.approx((at(hour=11, minute=0, second=0) - T0).total_seconds())


def test_a_failing_vm_is_retried_with_doubling_backoff() -> None:
    fake = FakeTime(T0)
    engine = RecordingEngine({"db-01": ("esx", ("ds",))}, failing=frozenset({"db-01"}))
    plan = policy_file(("db", "db-*", pit("interval: 1d")))
    records = run_policies(plan, engine, once=False, now=fake.now, sleep=fake.sleep, max_cycles=4)
    offsets = [(r.started - T0).total_seconds() for r in records]
    assert offsets == [0, 30, 90, 210]
    assert not any(r.ok for r in records)


def test_watch_mode_stops_when_asked_and_lets_the_cycle_in_flight_finish() -> None:
    """Continuous cycles run back to back; after stop is set, nothing new starts."""
    stop = threading.Event()
    engine = RecordingEngine({"db-01": ("esx", ("ds",))})
    plan = policy_file(("db", "db-*", "policy: continuous\n    settings: {target_rpo: 1m}"))
    seen: list[RunRecord] = []

    def on_record(record: RunRecord) -> None:
        seen.append(record)
        if len(seen) == 3:
            stop.set()

    thread, out = run_in_thread(
        lambda: run_policies(plan, engine, once=False, stop=stop, on_record=on_record)
    )
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    (records,) = out
    assert records == seen and len(records) == 3
    assert [kind for kind, _ in engine.calls] == ["protect", "replicate", "replicate"]
    assert all("within target RPO 1m" in r.summary for r in records)


def test_a_protection_that_selects_nothing_runs_nothing() -> None:
    engine = RecordingEngine({"db-01": ("esx", ("ds",))})
    assert run_policies(policy_file(("web", "web-*", pit())), engine, once=False, max_cycles=3) == []


def test_run_records_are_frozen() -> None:
    record = RunRecord("vm", "p", "clone", T0, T0, True, "ok", None)
    with pytest.raises(AttributeError):
        record.ok = False  # type: ignore[misc]
