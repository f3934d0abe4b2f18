"""What a hostile or careless operator did to earlier versions, each now a test (issue 12's list).

Leases and concurrency, settings that must not be reset, the sweep during
a cycle, repeated resyncs, damaged state, resumes with other options,
session renewal races, a failed commit, wrong mounts, failover with bad
networks. Checked through plain pyVmomi and file hashes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from tests.conftest import lab_vddk
from tests.replication_util import JOURNAL_KEY, STATE_KEY, option, point_hashes, snapshots, source_hashes
from tests.test_replication_crash import cli_env
from vsphere_replicator.connection import Connection, RetryPolicy, connect
from vsphere_replicator.errors import InvalidInput, ReplicatorError
from vsphere_replicator.inventory import DiskInfo
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, vddk_standin
from vsphere_replicator.replication import (
    CycleSettings,
    MountedDatastores,
    ReplicaTarget,
    StateError,
    VDDKDisks,
    failpoints,
    protect,
    replicate,
)
from vsphere_replicator.replication.failover import planned_failover
from vsphere_replicator.replication.lease import Busy, Lease, LeaseHolder, LeaseLost
from vsphere_replicator.replication.status import protection_status
from vsphere_replicator.replication.sweep import sweep_snapshots
from vsphere_replicator.transport.base import BlockSink

pytestmark = pytest.mark.reliability

DISK = 8 << 20
LEASE_KEY = "vsphere_replicator.lease"
TARGET = ReplicaTarget(datastore="secondary-ds", networks=(("VM Network", "DR Network"),))


@pytest.fixture(scope="module")
def slab() -> Iterator[LabInfo]:
    with running_lab(vms=60, disks_per_vm=2, disk_size=DISK, cbt_window=2 << 20, cbt_block=64 << 10) as lab:
        yield lab


@pytest.fixture(scope="module")
def _shared_ssi(slab: LabInfo) -> Iterator[Any]:
    si = labutil.connect(slab)
    yield si
    labutil.disconnect(si)


@pytest.fixture
def ssi(slab: LabInfo, _shared_ssi: Any) -> Any:
    """Plain pyVmomi, logged in again if a test expired the lab's sessions."""
    try:
        _shared_ssi.content.sessionManager.currentSession  # noqa: B018 - a liveness probe
    except vim.fault.NotAuthenticated:
        _shared_ssi.content.sessionManager.Login(slab.user, slab.password)
    return _shared_ssi


@pytest.fixture
def sconn(slab: LabInfo) -> Iterator[Connection]:
    quick = RetryPolicy(sleep=lambda _: None)
    with connect(slab.host, slab.user, slab.password, port=slab.port, ca_file=slab.ca_file, retry=quick) as c:
        yield c


@pytest.fixture(scope="module")
def scontrol(slab: LabInfo) -> LabControl:
    return LabControl(slab)


_names = iter(f"lab-vm-{i:04d}" for i in range(1, 61))


@pytest.fixture
def name() -> str:
    return next(_names)


def access(lab: LabInfo, conn: Connection) -> VDDKDisks:
    """The replica's redo logs are written through VDDK (the lab's stand-in)."""
    return lab_vddk(conn)


def write(control: LabControl, vm: str, seed: int) -> None:
    control.write_random(vm, offset=(seed % 5) << 20, length=2 << 20, seed=seed, disk=0)
    control.write_random(vm, offset=(seed % 3) << 20, length=1 << 20, seed=seed + 1, disk=1)


def cli(lab: LabInfo, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vsphere_replicator.cli", *args]
    return subprocess.run(command, env=cli_env(lab, **extra), capture_output=True, text=True, timeout=180)


def set_option(si: Any, vm: str, key: str, value: str) -> None:
    handle = labutil.find_vm(si, vm)
    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])
    labutil.wait(handle.ReconfigVM_Task(spec))


def replica_points(si: Any, vm: str) -> list[str]:
    data = json.loads(option(labutil.find_vm(si, f"{vm}-replica"), STATE_KEY) or "{}")
    return [p["id"] for p in data.get("restore_points", [])]


# -- leases ---------------------------------------------------------------------


def foreign_lease(seconds: int) -> str:
    """A lease as another proxy would hold it."""
    now = datetime.now(UTC)
    return LeaseHolder(
        token="f" * 32,
        operation="replicate",
        host="proxy-elsewhere",
        pid=4242,
        process=None,
        started=now,
        expires=now + timedelta(seconds=seconds),
    ).encode()


def test_a_live_lease_held_elsewhere_makes_replicate_busy_naming_the_holder(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    set_option(ssi, f"{name}-replica", LEASE_KEY, foreign_lease(600))
    write(scontrol, name, 5)
    with pytest.raises(Busy) as caught:
        replicate(sconn, name, replica_access=access(slab, sconn))
    assert "replicate by process 4242 on proxy-elsewhere" in str(caught.value)
    assert caught.value.holder.host == "proxy-elsewhere"
    assert our_transient(labutil.find_vm(ssi, name)) == []  # refused before anything was done
    run = cli(slab, "replicate", name)
    assert run.returncode == 5 and run.stderr.startswith("busy: ") and "proxy-elsewhere" in run.stderr
    assert "Traceback" not in run.stderr
    assert replica_points(ssi, name) == ["rp-000001"]


def test_an_expired_lease_is_taken_over(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    set_option(ssi, f"{name}-replica", LEASE_KEY, foreign_lease(-5))
    write(scontrol, name, 6)
    assert replicate(sconn, name, replica_access=access(slab, sconn)).restore_point == "rp-000002"
    assert option(labutil.find_vm(ssi, f"{name}-replica"), LEASE_KEY) is None  # released


def test_a_lease_of_a_killed_process_on_this_machine_is_taken_over_at_once(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 7)
    killed = cli(slab, "replicate", name, VSPHERE_REPLICATOR_CRASH_AT="planned:1")
    assert killed.returncode == -9
    holder = LeaseHolder.decode(option(labutil.find_vm(ssi, f"{name}-replica"), LEASE_KEY))
    assert holder is not None and holder.host == socket.gethostname()
    assert holder.expires > datetime.now(UTC)  # not expired: its process is dead, which we can tell
    again = cli(slab, "replicate", name)
    assert again.returncode == 0, again.stderr
    assert "lease_taken_over" in again.stderr


def test_a_holder_that_lost_its_lease_writes_nothing(
    slab: LabInfo, ssi: Any, sconn: Connection, name: str
) -> None:
    protect(sconn, name, TARGET)
    replica = labutil.find_vm(ssi, f"{name}-replica")
    lease = Lease(sconn, replica._moId, operation="test", vm=replica.name).acquire()
    try:
        set_option(ssi, replica.name, LEASE_KEY, foreign_lease(600))  # someone took it over
        before = option(replica, STATE_KEY)
        with pytest.raises(LeaseLost):
            lease.write({STATE_KEY: "{}"})
        assert option(labutil.find_vm(ssi, replica.name), STATE_KEY) == before
    finally:
        lease.release()
    assert LeaseHolder.decode(option(labutil.find_vm(ssi, replica.name), LEASE_KEY)) is not None  # theirs


def test_a_stale_change_version_is_refused_and_the_write_retried_on_the_fresh_one(
    slab: LabInfo, ssi: Any, sconn: Connection, name: str
) -> None:
    """Someone reconfigures the replica between our read and our write: the write is redone."""
    from vsphere_replicator.replication import options

    protect(sconn, name, TARGET)
    replica = labutil.find_vm(ssi, f"{name}-replica")
    real = options.read_options
    interfered: list[bool] = []

    def read_then_interfere(conn: Connection, moref: str) -> Any:
        seen = real(conn, moref)
        if not interfered:
            interfered.append(True)
            set_option(ssi, replica.name, "guestinfo.someone", "else")
        return seen

    lease = Lease(sconn, replica._moId, operation="test", vm=replica.name).acquire()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("vsphere_replicator.replication.lease.read_options", read_then_interfere)
            lease.write({"vsphere_replicator.note": "x"})
    finally:
        lease.release()
    fresh = labutil.find_vm(ssi, replica.name)
    assert option(fresh, "vsphere_replicator.note") == "x" and option(fresh, "guestinfo.someone") == "else"


# -- concurrency ----------------------------------------------------------------------


def race(*calls: Any) -> list[Any]:
    """Run the calls at once; each result or the ReplicatorError it raised."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except ReplicatorError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_two_replicates_at_once_one_wins_the_other_is_busy_and_nothing_is_lost(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 8)
    scontrol.slow_reads(200, count=6)  # the first cycle's reads are slow: the two overlap
    other = connect(slab.host, slab.user, slab.password, port=slab.port, ca_file=slab.ca_file)
    try:
        results = race(
            lambda: replicate(sconn, name, replica_access=access(slab, sconn)),
            lambda: replicate(other, name, replica_access=access(slab, other)),
        )
    finally:
        other.close()
        scontrol.clear_faults()
    busy = [r for r in results if isinstance(r, Busy)]
    done = [r for r in results if not isinstance(r, ReplicatorError)]
    assert len(busy) == 1 and len(done) == 1, results
    assert replica_points(ssi, name) == ["rp-000001", "rp-000002"]
    replica = labutil.find_vm(ssi, f"{name}-replica")
    assert point_hashes(slab, replica, "rp-000002") == source_hashes(slab, labutil.find_vm(ssi, name))
    assert option(replica, JOURNAL_KEY) is None
    write(scontrol, name, 9)
    assert replicate(sconn, name, replica_access=access(slab, sconn)).restore_point == "rp-000003"


def test_two_protects_at_once_make_one_replica(slab: LabInfo, ssi: Any, sconn: Connection, name: str) -> None:
    other = connect(slab.host, slab.user, slab.password, port=slab.port, ca_file=slab.ca_file)
    try:
        results = race(
            lambda: protect(sconn, name, TARGET),
            lambda: protect(other, name, ReplicaTarget(datastore="secondary-ds", name="{vm}-other")),
        )
    finally:
        other.close()
    replicas = [v.name for v in labutil_all(ssi) if v.name.startswith(f"{name}-")]
    assert len(replicas) == 1, (replicas, results)
    assert (
        sum(isinstance(r, Busy) for r in results) + sum(getattr(r, "confirmed", False) for r in results) == 1
    ), results


def labutil_all(si: Any) -> list[Any]:
    from tests.replication_util import all_vms

    return all_vms(si)


def test_replicate_during_run_watch_gets_busy_and_nothing_is_lost(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str, tmp_path: Path
) -> None:
    protect(sconn, name, TARGET)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nprotections:\n"
        f"  - name: one\n    select: {{names: [{name}]}}\n    policy: continuous\n"
        "    settings: {target_rpo: 1s}\n"
        "    target: {datastore: secondary-ds}\n"
    )
    env = cli_env(slab)
    watch = subprocess.Popen(
        [sys.executable, "-m", "vsphere_replicator.cli", "run", str(policy), "--watch", "--max-cycles", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    outcomes: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(outcomes) < 8:
            write(scontrol, name, len(outcomes) + 20)
            try:
                outcomes.append(replicate(sconn, name, replica_access=access(slab, sconn)))
            except Busy as exc:
                outcomes.append(exc)
    finally:
        watch.terminate()
        records, errors = watch.communicate(timeout=120)
    # Both sides ran cycles; whenever they met, one of them was refused as busy, never anything worse.
    failed = [line for line in records.splitlines() if "FAILED" in line]
    assert all("busy" in line for line in failed), failed
    assert any(isinstance(o, Busy) for o in outcomes) or failed, (outcomes, records, errors[-2000:])
    replicate(sconn, name, replica_access=access(slab, sconn))
    replica = labutil.find_vm(ssi, f"{name}-replica")
    points = replica_points(ssi, name)
    assert sorted(s.name for s in snapshots(replica)) == sorted("vr-" + p for p in points)
    assert point_hashes(slab, replica, points[-1]) == source_hashes(slab, labutil.find_vm(ssi, name))


def our_transient(vm: Any) -> list[str]:
    return [n.name for n in snapshots(vm) if n.description.startswith("vsphere_replicator:snapshot:v1")]


def test_a_sweep_during_a_cycle_spares_its_snapshot_and_the_cycle_commits(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 10)
    swept: list[Any] = []

    def sweep_now() -> None:
        time.sleep(1.1)
        swept.append(sweep_snapshots(sconn, older_than=timedelta(seconds=1)))

    with failpoints.armed("planned:1", sweep_now):
        result = replicate(sconn, name, replica_access=access(slab, sconn))
    assert result.restore_point == "rp-000002"
    assert swept and swept[0].removed == ()
    assert any("cycle in flight" in s.reason or "busy" in s.reason for s in swept[0].spared)
    replica = labutil.find_vm(ssi, f"{name}-replica")
    assert point_hashes(slab, replica, "rp-000002") == source_hashes(slab, labutil.find_vm(ssi, name))


def test_the_sweep_never_takes_the_snapshot_of_an_interrupted_cycle_whatever_its_age(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 11)
    with failpoints.armed("checkpoint:1"), pytest.raises(failpoints.Crash):
        replicate(sconn, name, replica_access=access(slab, sconn), chunk=1 << 20, checkpoint_every=1 << 20)
    time.sleep(1.1)
    swept = cli(slab, "snapshots", "sweep", "--older-than", "1s", "--json")
    assert swept.returncode == 0, swept.stderr
    rows = json.loads(swept.stdout)
    assert rows and all(r["kept"] for r in rows), rows
    assert len(our_transient(labutil.find_vm(ssi, name))) == 1
    assert replicate(sconn, name, replica_access=access(slab, sconn)).resumed
    assert point_hashes(slab, labutil.find_vm(ssi, f"{name}-replica"), "rp-000002") == source_hashes(
        slab, labutil.find_vm(ssi, name)
    )


# -- settings ---------------------------------------------------------------------------


def test_options_given_to_replicate_apply_to_that_run_only(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    ran = cli(slab, "protect", name, "--datastore", "secondary-ds", "--keep", "8", "--max-age", "30d")
    assert ran.returncode == 0, ran.stderr
    before = json.loads(option(labutil.find_vm(ssi, f"{name}-replica"), STATE_KEY) or "{}")["settings"]
    write(scontrol, name, 12)
    ran = cli(slab, "replicate", name, "--max-change-share", "0.9")
    assert ran.returncode == 0, ran.stderr
    after = json.loads(option(labutil.find_vm(ssi, f"{name}-replica"), STATE_KEY) or "{}")["settings"]
    assert after == before and after["keep"] == 8 and after["max_age"] == 30 * 86400
    shown = cli(slab, "settings", name, "--keep", "3", "--json")
    assert shown.returncode == 0, shown.stderr
    change = json.loads(shown.stdout)
    assert change["before"]["keep"] == 8 and change["after"]["keep"] == 3 and change["changed"] == ["keep"]


# -- full resyncs, disks by identity ------------------------------------------------------


def vmdk_files(lab: LabInfo, datastore: str) -> set[str]:
    root = Path(lab.datastores[datastore])
    return {
        str(p.relative_to(root))
        for p in root.rglob("*.vmdk")
        if not p.name.endswith(("-flat.vmdk", "-delta.vmdk", "-sesparse.vmdk", "-ctk.vmdk"))
    }


def referenced(si: Any, vm: Any) -> set[str]:
    files = set()
    for owner in [vm, *(s.snapshot for s in snapshots(vm))]:
        for disk in labutil.disks(owner):
            backing = disk.backing
            while backing is not None:
                files.add(backing.fileName.split("] ", 1)[1])
                backing = backing.parent
    return files


def test_a_second_full_resync_of_the_same_disk_works_and_leaves_no_stray_disk(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    for round_ in range(2):
        scontrol.cbt_reset(name, 0)
        write(scontrol, name, 30 + round_)
        result = replicate(sconn, name, replica_access=access(slab, sconn))
        assert result.full_resync == (2000,), result
    replica = labutil.find_vm(ssi, f"{name}-replica")
    assert point_hashes(slab, replica, "rp-000003") == source_hashes(slab, labutil.find_vm(ssi, name))
    mine = {f for f in vmdk_files(slab, "secondary-ds") if f.startswith(f"{name}-replica")}
    assert mine <= referenced(ssi, replica), mine - referenced(ssi, replica)


def test_an_undone_resync_deletes_the_disk_it_added(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    scontrol.cbt_reset(name, 0)
    write(scontrol, name, 40)
    with failpoints.armed("checkpoint:1"), pytest.raises(failpoints.Crash):
        replicate(sconn, name, replica_access=access(slab, sconn), chunk=1 << 20, checkpoint_every=1 << 20)
    source = labutil.find_vm(ssi, name)
    for snap in snapshots(source):  # the cycle's source snapshot is lost: the cycle must be undone
        labutil.wait(snap.snapshot.RemoveSnapshot_Task(removeChildren=False))
    result = replicate(sconn, name, replica_access=access(slab, sconn))
    assert not result.resumed and result.full_resync == (2000,)
    replica = labutil.find_vm(ssi, f"{name}-replica")
    mine = {f for f in vmdk_files(slab, "secondary-ds") if f.startswith(f"{name}-replica")}
    assert mine <= referenced(ssi, replica), mine - referenced(ssi, replica)


# -- damaged state --------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["{not json", "[]", "123"])
def test_a_damaged_state_affects_its_vm_only(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, damage: str
) -> None:
    bad, good = next(_names), next(_names)
    protect(sconn, bad, TARGET)
    protect(sconn, good, TARGET)
    set_option(ssi, f"{bad}-replica", STATE_KEY, damage)
    shown = cli(slab, "status", "--json")
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    rows = {r["replica"]: r for r in json.loads(shown.stdout)}
    assert rows[f"{bad}-replica"]["state"] == "state unreadable"
    assert f"{bad}-replica" in rows[f"{bad}-replica"]["last_error"]
    assert rows[f"{good}-replica"]["state"] == "protected"
    write(scontrol, good, 50)
    assert replicate(sconn, good, replica_access=access(slab, sconn)).restore_point == "rp-000002"
    ran = cli(slab, "replicate", bad)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert f"{bad}-replica" in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
    assert [s.name for s in snapshots(labutil.find_vm(ssi, f"{bad}-replica"))] == ["vr-rp-000001"]
    assert cli(slab, "protect", bad, "--datastore", "secondary-ds").returncode != 0  # never a second replica


def test_a_state_without_restore_points_is_refused_and_no_snapshot_is_deleted(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    replica = labutil.find_vm(ssi, f"{name}-replica")
    data = json.loads(option(replica, STATE_KEY) or "{}")
    data["restore_points"] = []
    set_option(ssi, replica.name, STATE_KEY, json.dumps(data))
    write(scontrol, name, 51)
    with pytest.raises(StateError) as caught:
        replicate(sconn, name, replica_access=access(slab, sconn))
    assert "restore_points" in str(caught.value) and replica.name in str(caught.value)
    assert [s.name for s in snapshots(labutil.find_vm(ssi, replica.name))] == ["vr-rp-000001"]


def test_an_unknown_journal_phase_is_refused_and_commits_nothing(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    journal = {
        "v": 1,
        "cycle": "x",
        "phase": "done",
        "source_snapshot": None,
        "started": "2026-01-01T00:00:00+00:00",
    }
    set_option(ssi, f"{name}-replica", JOURNAL_KEY, json.dumps(journal))
    with pytest.raises(StateError) as caught:
        replicate(sconn, name, replica_access=access(slab, sconn))
    assert "phase" in str(caught.value)
    assert replica_points(ssi, name) == ["rp-000001"]


# -- resume with other options, session races, a failed commit ---------------------------


def test_a_resume_follows_the_interrupted_plan_whatever_chunk_it_is_given(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 60)
    with failpoints.armed("checkpoint:2"), pytest.raises(failpoints.Crash):
        replicate(sconn, name, replica_access=access(slab, sconn), chunk=1 << 20, checkpoint_every=1 << 20)
    result = replicate(sconn, name, replica_access=access(slab, sconn), chunk=4 << 20)
    assert result.resumed and result.bytes_moved >= result.bytes_changed
    replica = labutil.find_vm(ssi, f"{name}-replica")
    assert point_hashes(slab, replica, "rp-000002") == source_hashes(slab, labutil.find_vm(ssi, name))


def test_sessions_expiring_under_parallel_reads_are_renewed_once(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 61)
    scontrol.slow_reads(100, count=8)
    with failpoints.armed("planned:1", scontrol.expire_sessions):
        result = replicate(sconn, name, replica_access=access(slab, sconn), workers=4, chunk=256 << 10)
    scontrol.clear_faults()
    assert result.restore_point == "rp-000002"
    ssi.content.sessionManager.Login(slab.user, slab.password)  # the checks' own session expired too
    replica = labutil.find_vm(ssi, f"{name}-replica")
    assert point_hashes(slab, replica, "rp-000002") == source_hashes(slab, labutil.find_vm(ssi, name))


def test_one_dropped_response_while_connecting_is_retried(slab: LabInfo, scontrol: LabControl) -> None:
    scontrol.drop_connections(count=1, path="sdk")
    quick = RetryPolicy(sleep=lambda _: None)
    with connect(slab.host, slab.user, slab.password, port=slab.port, ca_file=slab.ca_file, retry=quick) as c:
        assert c.content.about.apiVersion
    scontrol.clear_faults()


def test_a_failed_commit_is_not_half_committed(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 62)
    fail = lambda: scontrol.fail_method("ReconfigVM_Task", "GenericVmConfigFault", count=1)  # noqa: E731
    with failpoints.armed("restore-point-taken:1", fail), pytest.raises(ReplicatorError):
        replicate(sconn, name, replica_access=access(slab, sconn))
    scontrol.clear_faults()
    replicate(sconn, name, replica_access=access(slab, sconn))
    write(scontrol, name, 63)
    replicate(sconn, name, replica_access=access(slab, sconn))
    assert replica_points(ssi, name) == ["rp-000001", "rp-000002", "rp-000003"]


# -- mounts, networks ---------------------------------------------------------------------------


def test_a_mount_that_is_not_the_datastore_is_refused_before_anything_changes(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str, tmp_path: Path
) -> None:
    """The source's base disk is flat (NFS-like): a mount may read it, once shown to be that datastore."""
    protect(sconn, name, TARGET)
    stale = tmp_path / "stale"
    subprocess.run(["cp", "-a", slab.datastores["primary-ds"], str(stale)], check=True)
    write(scontrol, name, 70)
    wrong = MountedDatastores({"primary-ds": stale}, conn=sconn)
    with pytest.raises(InvalidInput, match="is not datastore primary-ds"):
        replicate(sconn, name, replica_access=access(slab, sconn), source_access=wrong)
    assert our_transient(labutil.find_vm(ssi, name)) == []
    assert option(labutil.find_vm(ssi, f"{name}-replica"), JOURNAL_KEY) is None
    assert replica_points(ssi, name) == ["rp-000001"]


def test_protect_refuses_unknown_recovery_networks_a_replica_and_the_source_datastore(
    slab: LabInfo, ssi: Any, sconn: Connection, name: str
) -> None:
    with pytest.raises(InvalidInput, match="No Such Net"):
        protect(
            sconn, name, ReplicaTarget(datastore="secondary-ds", networks=(("VM Network", "No Such Net"),))
        )
    with pytest.raises(InvalidInput, match="holds"):
        protect(sconn, name, ReplicaTarget(datastore="primary-ds"))
    assert snapshots(labutil.find_vm(ssi, name)) == []
    protect(sconn, name, TARGET)
    with pytest.raises(InvalidInput, match="replica"):
        protect(sconn, f"{name}-replica", ReplicaTarget(datastore="primary-ds", name="{vm}-again"))


def test_a_failover_whose_nic_move_fails_leaves_production_running_and_the_points_intact(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    write(scontrol, name, 80)
    replicate(sconn, name, replica_access=access(slab, sconn))
    fail = lambda: scontrol.fail_method("ReconfigVM_Task", "GenericVmConfigFault", count=1)  # noqa: E731
    with failpoints.armed("failover-synced:1", fail), pytest.raises(ReplicatorError):
        planned_failover(sconn, name, replica_access=access(slab, sconn))
    scontrol.clear_faults()
    source, replica = labutil.find_vm(ssi, name), labutil.find_vm(ssi, f"{name}-replica")
    assert source.runtime.powerState == "poweredOn" and replica.runtime.powerState == "poweredOff"
    assert replica_points(ssi, name)[:2] == ["rp-000001", "rp-000002"]
    assert not json.loads(option(replica, STATE_KEY) or "{}")["promoted"]
    statuses = {s.vm: s for s in protection_status(sconn)}
    assert statuses[name].operation is None  # undone: nothing to continue
    result = planned_failover(sconn, name, replica_access=access(slab, sconn))
    assert labutil.find_vm(ssi, result.running).runtime.powerState == "poweredOn"
    assert labutil.find_vm(ssi, name).runtime.powerState == "poweredOff"


def test_failover_without_saying_which_is_refused(slab: LabInfo, sconn: Connection, name: str) -> None:
    protect(sconn, name, TARGET)
    ran = cli(slab, "failover", name)
    assert ran.returncode == 2 and "--unplanned" in ran.stderr
    ran = cli(slab, "failover", name, "--unplanned")
    assert ran.returncode == 2 and "running" in ran.stderr  # two copies of production: only when forced


def test_disks_sweep_finds_and_removes_what_nothing_references_and_nothing_else(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    protect(sconn, name, TARGET)
    folder = Path(slab.datastores["secondary-ds"]) / f"{name}-replica"
    real = sorted(p.name for p in folder.iterdir())
    descriptor = next(p for p in folder.glob("*.vmdk") if not p.name.endswith("-flat.vmdk"))
    (folder / "left-behind.vmdk").write_bytes(descriptor.read_bytes())
    (folder / "left-behind-flat.vmdk").write_bytes(b"\0" * 4096)
    listed = cli(slab, "disks", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    files = [d["file"] for d in json.loads(listed.stdout) if d["replica"] == f"{name}-replica"]
    assert files == [f"[secondary-ds] {name}-replica/left-behind.vmdk"]
    swept = cli(slab, "disks", "sweep", "--json")
    assert swept.returncode == 0 and any(d["removed"] for d in json.loads(swept.stdout)), swept.stderr
    assert sorted(p.name for p in folder.iterdir()) == real
    write(scontrol, name, 90)
    assert replicate(sconn, name, replica_access=access(slab, sconn)).restore_point == "rp-000002"


class CorruptingWriter(VDDKDisks):
    """VDDK whose replica writes flip one byte of the first write: a writer that goes wrong silently."""

    def sink(self, disk: DiskInfo, *, vm: str) -> BlockSink:
        inner = super().sink(disk, vm=vm)
        writer = self

        class Corrupting:
            size = inner.size

            def write(self, offset: int, data: bytes) -> None:
                if data and not writer.corrupted:
                    writer.corrupted = True
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                inner.write(offset, data)

            def flush(self) -> None:
                inner.flush()

            def close(self) -> None:
                inner.close()

        return Corrupting()

    corrupted = False


def test_verify_reads_the_point_back_on_its_own_path_and_catches_a_writer_gone_wrong(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    """The writer's bytes are read back through the point's snapshot, read-only: a bad write is caught."""
    from vsphere_replicator.replication import VerificationFailed

    protect(sconn, name, TARGET)
    writer = CorruptingWriter(sconn, plugin=str(vddk_standin()))
    write(scontrol, name, 91)
    with pytest.raises(VerificationFailed):
        replicate(sconn, name, replica_access=writer, settings=CycleSettings(verify=True))
    assert writer.corrupted
    assert replica_points(ssi, name) == ["rp-000001"]  # the cycle was undone, nothing recorded
    assert our_transient(labutil.find_vm(ssi, name)) == []


def test_a_power_on_fault_in_failbacks_switch_leaves_one_vm_running_and_a_rerun_finishes(
    slab: LabInfo, ssi: Any, sconn: Connection, scontrol: LabControl, name: str
) -> None:
    from vsphere_replicator.replication.failback import failback

    protect(sconn, name, TARGET)
    planned_failover(sconn, name, replica_access=access(slab, sconn))
    write(scontrol, f"{name}-replica", 92)
    content = source_hashes(slab, labutil.find_vm(ssi, f"{name}-replica"))
    fail = lambda: scontrol.fail_method("PowerOnVM_Task", "InvalidState", count=1)  # noqa: E731
    with failpoints.armed("failback-reversed:1", fail), pytest.raises(ReplicatorError):
        failback(sconn, name, replica_access=access(slab, sconn))
    scontrol.clear_faults()
    running = [
        v for v in (name, f"{name}-replica") if labutil.find_vm(ssi, v).runtime.powerState == "poweredOn"
    ]
    assert running == [f"{name}-replica"], running  # production stayed where it was
    failback(sconn, name, replica_access=access(slab, sconn))
    original = labutil.find_vm(ssi, name)
    assert original.runtime.powerState == "poweredOn" and source_hashes(slab, original) == content
    assert labutil.find_vm(ssi, f"{name}-replica").runtime.powerState == "poweredOff"
