"""A cycle is a transaction: a real kill -9 at each kind of step, then a normal run ends byte-exact and clean.

Every step is also stopped in-process, with each fault kind, by the matrix in
test_reliability.py; here the process really dies, once per kind of step.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import DISK_SIZE
from tests.replication_util import (
    JOURNAL_KEY,
    assert_replica_matches,
    find,
    option,
    our_source_snapshots,
    snapshots,
    state,
)
from vsphere_replicator.lab import vddk_standin
from vsphere_replicator.replication import CycleSettings, ReplicaTarget, protect


def lab_mounts(lab: Any) -> str:
    """VSPHERE_REPLICATOR_MOUNTS for the lab's datastores (local directories)."""
    return ",".join(f"{k}={v}" for k, v in lab.datastores.items())


def cli_env(lab: Any, **extra: str) -> dict[str, str]:
    """The CLI's environment for `lab`: its vCenter, and VDDK through the lab's stand-in, nothing mounted.

    The lab's layers are redo logs as ESXi's: from a replica's first restore
    point on, VDDK is the only way to write it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSPHERE_", "VR_"))}
    env.update(
        VSPHERE_HOST=lab.host,
        VSPHERE_PORT=str(lab.port),
        VSPHERE_USER=lab.user,
        VSPHERE_PASSWORD=lab.password,
        VSPHERE_CA_FILE=lab.ca_file,
        VSPHERE_REPLICATOR_TRANSPORT="vddk",
        VSPHERE_REPLICATOR_VDDK_PLUGIN=str(vddk_standin()),
        **extra,
    )
    return env


def replicate_cli(lab: Any, vm: str, **extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vsphere_replicator.cli", "replicate", vm]
    command += ["--checkpoint-every", "1MiB", "--chunk", "1MiB", "--json"]
    return subprocess.run(command, env=cli_env(lab, **extra), capture_output=True, text=True, timeout=120)


def guest_writes(control: Any, vm: str, rng: random.Random) -> None:
    """About 9 MiB over both disks, at random offsets: eight or so checkpoints per cycle."""
    for disk, length in ((0, 7 << 19), (1, 3 << 20), (0, 2 << 20), (1, 70_000)):
        offset = rng.randrange(0, DISK_SIZE - length)
        control.write_random(vm, offset=offset, length=length, seed=rng.randrange(1 << 30), disk=disk)


def assert_clean(lab: Any, si: Any, vm: str) -> None:
    source, replica = find(si, vm), find(si, f"{vm}-replica")
    recorded = state(replica)
    assert option(replica, JOURNAL_KEY) is None
    assert our_source_snapshots(source) == []
    points = [p["id"] for p in recorded["restore_points"]]
    assert sorted(n.name for n in snapshots(replica)) == sorted("vr-" + p for p in points)
    assert_replica_matches(lab, source, replica, points[-1])


def test_kill_nine_at_every_kind_of_step_of_a_cycle_then_a_normal_run_ends_byte_exact(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str, tmp_path: Path
) -> None:
    rng = random.Random(2026)
    guest_writes(control, vm_name, rng)
    protect(conn, vm_name, ReplicaTarget(datastore="secondary-ds"), settings=CycleSettings(keep=3))
    for _ in range(3):  # reach steady state: every cycle now also prunes one restore point
        guest_writes(control, vm_name, rng)
        assert replicate_cli(lab, vm_name).returncode == 0

    trace = tmp_path / "trace"
    guest_writes(control, vm_name, rng)
    traced = replicate_cli(lab, vm_name, VSPHERE_REPLICATOR_CRASH_TRACE=str(trace))
    assert traced.returncode == 0, traced.stderr
    points = trace.read_text().splitlines()
    assert_clean(lab, si, vm_name)

    # Every kind of step once, and a checkpoint deep into the copy.
    chosen = {p for p in points if p.endswith(":1")} | {"checkpoint:3"}
    crashed: list[str] = []
    for at in sorted(chosen):
        guest_writes(control, vm_name, rng)
        killed = replicate_cli(lab, vm_name, VSPHERE_REPLICATOR_CRASH_AT=at)
        if killed.returncode == -9:
            crashed.append(at)
        else:  # this round's writes made fewer checkpoints than the traced one
            assert killed.returncode == 0 and at.startswith("checkpoint:"), killed.stderr
        resumed = replicate_cli(lab, vm_name)
        assert resumed.returncode == 0, resumed.stderr
        assert_clean(lab, si, vm_name)
    assert len(crashed) >= 10, crashed
    assert {at.split(":")[0] for at in crashed} >= {
        "journal-begun",
        "source-snapshot-taken",
        "planned",
        "checkpoint",
        "disk-copied",
        "copied",
        "restore-point-taken",
        "committed",
        "source-snapshot-removed",
        "retention-recorded",
    }


def protect_cli(lab: Any, vm: str, **extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vsphere_replicator.cli", "protect", vm, "--datastore", "secondary-ds"]
    return subprocess.run(command, env=cli_env(lab, **extra), capture_output=True, text=True, timeout=120)


SEED_POINTS = [
    "seed-snapshot-taken:1",
    "seed-replica-made:1",
    "seed-restore-point-taken:1",
    "seed-committed:1",
    "seed-snapshot-removed:1",
]


def test_kill_nine_during_protect_then_protect_again_finishes_the_seed(
    lab: Any, si: Any, control: Any, fresh_vm: Any
) -> None:
    for at in SEED_POINTS:
        vm = fresh_vm()
        control.write_random(vm, offset=65536 * 3, length=500_000, seed=len(at))
        killed = protect_cli(lab, vm, VSPHERE_REPLICATOR_CRASH_AT=at)
        assert killed.returncode == -9, (at, killed.stderr)
        again = protect_cli(lab, vm)
        assert again.returncode == 0, (at, again.stderr)  # finishes the seed, or tidies after it
        control.write_random(vm, offset=1 << 20, length=10_000, seed=1)
        assert replicate_cli(lab, vm).returncode == 0
        assert_clean(lab, si, vm)
