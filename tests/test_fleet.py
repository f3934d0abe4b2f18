"""Per-VM cycles on a real dask cluster: a `dask scheduler` and `dask worker` processes on 127.0.0.1.

One scheduler and two workers ("a", "b") serve the whole module; each
worker reaches the lab through its own environment (the default profile
and the lab's mounts), as a proxy would. Checked through plain pyVmomi and
the bytes of the lab's disk files, as the other end-to-end tests are.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import distributed  # the fleet extra, installed by scripts/setup.sh
import pytest

from tests.conftest import lab_vddk
from tests.replication_util import (
    JOURNAL_KEY,
    assert_replica_matches,
    find,
    option,
    our_source_snapshots,
    state,
)
from tests.test_replication_crash import cli_env
from vsphere_replicator.policies import PolicyFile, parse_policy_file
from vsphere_replicator.policies.fleet import CycleJob, is_dask_executor, run_cycle_job, worker_id
from vsphere_replicator.replication import ReplicaTarget, protect

STARTUP = 60.0  # seconds: a bound on every process start and every wait for the cluster
TARGET = ReplicaTarget(datastore="secondary-ds")


def policy_text(vms: list[str], bandwidth: str = "400MiB/s") -> str:
    names = ", ".join(f'"{vm}"' for vm in vms)
    return f"""version: 1
limits: {{total: 4, per_host: 4, per_datastore: 4, bandwidth: {bandwidth}}}
protections:
  - name: fleet
    select: {{names: [{names}]}}
    target: {{datastore: secondary-ds}}
    policy: point-in-time
    settings: {{interval: 1h, keep: 3}}
"""


def job(policy: PolicyFile, vm: str, **changes: Any) -> CycleJob:
    protection = policy.protections[0]
    fields: dict[str, Any] = {
        "vm": vm,
        "protection": protection.name,
        "policy": protection.policy,
        "target": protection.target,
        "settings": protection.settings,
        "profile": None,
        "transport": "vddk",
        "limits": policy.limits,
        "host": "",
        "datastores": (),
        "cluster": True,
    }
    fields.update(changes)
    return CycleJob(**fields)


class Cluster:
    """A dask scheduler and named workers, each a process of its own; `kill` is a real SIGKILL."""

    def __init__(self, lab: Any, directory: Path) -> None:
        self.lab = lab
        self.directory = directory
        self.file = directory / "scheduler.json"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.address = ""

    def _spawn(self, name: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            # As docs/fleet.md tells operators on this Python (3.11.7): dask's worker profiler can deadlock
            # a whole worker (CPython #106883); a CI run saw one hang so mid-cycle and log nothing more.
            env=cli_env(self.lab, DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="False", **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        self.processes[name] = process
        # Reaped as soon as it dies, as a service manager would: a zombie still looks alive to the lease.
        threading.Thread(target=process.wait, name=f"reap-{name}", daemon=True).start()
        return process

    def start_scheduler(self) -> None:
        self._spawn(
            "scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(self.file),
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP
        while not self.file.exists() or not self.file.read_text().strip():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            assert self.processes["scheduler"].poll() is None, self.log("scheduler")
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]

    def start_worker(self, name: str, **extra: str) -> None:
        self._spawn(
            name, "worker", "--scheduler-file", str(self.file), "--name", name, "--nthreads", "2",
            "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
            **extra,
        )  # fmt: skip

    def wait_for(self, client: Any, names: set[str]) -> None:
        deadline = time.monotonic() + STARTUP
        while not names <= self.worker_names(client):
            assert time.monotonic() < deadline, f"workers {names} did not join: {self.worker_names(client)}"
            for name in names:
                assert self.processes[name].poll() is None, self.log(name)
            time.sleep(0.2)

    @staticmethod
    def worker_names(client: Any) -> set[str]:
        return {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=STARTUP)


@pytest.fixture(scope="module")
def cluster(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(lab, tmp_path_factory.mktemp("dask"))
    try:
        running.start_scheduler()
        running.start_worker("a")
        running.start_worker("b")
        with distributed.Client(running.address, timeout=STARTUP) as client:
            running.wait_for(client, {"a", "b"})
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Any]:
    with distributed.Client(cluster.address, timeout=STARTUP, set_as_default=False) as connected:
        yield connected


def cli(lab: Any, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vsphere_replicator.cli", *args]
    return subprocess.run(command, env=cli_env(lab, **extra), capture_output=True, text=True, timeout=300)


def protected(lab: Any, control: Any, vm: str) -> None:
    """Seeded (restore point rp-000001), then changed on both disks."""
    from tests.conftest import lab_connection

    with lab_connection(lab) as conn:
        protect(conn, vm, TARGET, replica_access=lab_vddk(conn))
    for disk in (0, 1):
        control.write_random(vm, offset=(3 + disk) << 20, length=3 << 20, seed=40 + disk, disk=disk)


def test_run_with_scheduler_gives_each_vm_one_restore_point_on_both_workers(
    lab: Any, si: Any, control: Any, fresh_vm: Callable[[], str], cluster: Cluster, tmp_path: Path
) -> None:
    vms = [fresh_vm() for _ in range(8)]
    for i, vm in enumerate(vms):
        control.write_random(vm, offset=4096 * i, length=200_000, seed=i)
    policy = tmp_path / "fleet.yaml"
    policy.write_text(policy_text(vms))

    result = cli(lab, "run", str(policy), "--json", VSPHERE_REPLICATOR_SCHEDULER=cluster.address)

    assert result.returncode == 0, (result.stdout, result.stderr)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sorted((r["vm"], r["ok"]) for r in records) == [(vm, True) for vm in sorted(vms)]
    assert {r["worker"] for r in records} == {"a", "b"}
    for vm in vms:
        source, replica = find(si, vm), find(si, f"{vm}-replica")
        assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001"]
        assert_replica_matches(lab, source, replica, "rp-000001")
        assert our_source_snapshots(source) == []


def test_watch_with_a_scheduler_keeps_scheduling_and_the_status_comes_back(
    lab: Any, si: Any, control: Any, fresh_vm: Callable[[], str], cluster: Cluster, tmp_path: Path
) -> None:
    vm = fresh_vm()
    control.write_random(vm, offset=8192, length=100_000, seed=77)
    policy = tmp_path / "continuous.yaml"
    policy.write_text(
        f"""version: 1
protections:
  - name: near
    select: {{names: ["{vm}"]}}
    target: {{datastore: secondary-ds}}
    policy: continuous
    settings: {{target_rpo: 1h}}
"""
    )

    result = cli(
        lab, "run", str(policy), "--watch", "--max-cycles", "2", "--json", "--scheduler", cluster.address
    )

    assert result.returncode == 0, (result.stdout, result.stderr)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [(r["vm"], r["ok"]) for r in records] == [(vm, True), (vm, True)]
    assert {r["worker"] for r in records} <= {"a", "b"}
    assert all("within target RPO 1h" in r["summary"] for r in records), [r["summary"] for r in records]
    assert "nothing changed" in records[1]["summary"], records[1]["summary"]  # the seed, then a confirm
    source, replica = find(si, vm), find(si, f"{vm}-replica")
    assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001"]
    assert_replica_matches(lab, source, replica, "rp-000001")
    assert our_source_snapshots(source) == []


def test_a_worker_killed_mid_cycle_is_replaced_and_the_cycle_resumes_from_its_journal(
    lab: Any, si: Any, control: Any, fresh_vm: Callable[[], str], cluster: Cluster, client: Any
) -> None:
    vm = fresh_vm()
    protected(lab, control, vm)
    # Worker "c" kills itself (SIGKILL) after the cycle's first disk is copied: mid-cycle, journaled.
    cluster.start_worker("c", VSPHERE_REPLICATOR_CRASH_AT="disk-copied:1")
    cluster.wait_for(client, {"a", "b", "c"})
    policy = parse_policy_file(policy_text([vm]))

    future = client.submit(
        run_cycle_job, job(policy, vm), workers=["c"], allow_other_workers=True, pure=False
    )
    result = future.result(timeout=180)

    assert cluster.processes["c"].wait(timeout=STARTUP) == -signal.SIGKILL
    assert result.ok, result.error
    assert result.worker in {"a", "b"}
    source, replica = find(si, vm), find(si, f"{vm}-replica")
    assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001", "rp-000002"]
    assert_replica_matches(lab, source, replica, "rp-000002")
    assert our_source_snapshots(source) == []
    assert not option(replica, JOURNAL_KEY)


def test_the_same_vms_job_twice_at_once_runs_one_cycle_and_the_other_is_busy(
    lab: Any, si: Any, control: Any, fresh_vm: Callable[[], str], client: Any
) -> None:
    vm = fresh_vm()
    protected(lab, control, vm)
    # 8 MiB/s over total 4: a cycle moves its 6 MiB at 2 MiB/s, so the two jobs overlap for sure.
    policy = parse_policy_file(policy_text([vm], bandwidth="8MiB/s"))
    twice = [client.submit(run_cycle_job, job(policy, vm), workers=[name], pure=False) for name in ("a", "b")]

    results = [future.result(timeout=180) for future in twice]

    assert sorted(r.ok for r in results) == [False, True], [r.error for r in results]
    busy = next(r for r in results if not r.ok)
    assert busy.error is not None and busy.error.startswith("Busy: "), busy.error
    assert {r.worker for r in results} == {"a", "b"}
    source, replica = find(si, vm), find(si, f"{vm}-replica")
    assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001", "rp-000002"]
    assert_replica_matches(lab, source, replica, "rp-000002")
    assert our_source_snapshots(source) == []


def test_a_job_pickles_without_any_secret(lab: Any) -> None:
    policy = parse_policy_file(policy_text(["lab-vm-9999"]))
    pickled = pickle.dumps(job(policy, "lab-vm-9999", profile="prod"))
    assert pickle.loads(pickled) == job(policy, "lab-vm-9999", profile="prod")
    assert lab.password.encode() not in pickled
    assert b"PASSWORD" not in pickled.upper()


def test_a_worker_without_the_profile_answers_which_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSPHERE_NOWHERE_HOST", raising=False)
    policy = parse_policy_file(policy_text(["lab-vm-9999"]))
    with ThreadPoolExecutor(1) as pool:
        assert not is_dask_executor(pool)
        result = pool.submit(
            run_cycle_job, job(policy, "lab-vm-9999", profile="nowhere", cluster=False)
        ).result()
    assert not result.ok
    assert result.error == (
        "InvalidInput: profile 'nowhere' is not set: export VSPHERE_NOWHERE_HOST, VSPHERE_NOWHERE_USER, ..."
    )
    assert result.worker.startswith(f"{os.uname().nodename}:{os.getpid()}:")
    assert worker_id().endswith(":MainThread")
