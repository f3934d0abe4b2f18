"""The main job on the embedded lab: protect a VM, replicate its changes, test a failover.

The lab is ESXi-like (snapshot layers are redo logs; a running VM's disks are
locked), so every byte goes through VDDK: one nbdkit per disk with the lab's
VDDK stand-in, as against a real vCenter with VMware's plugin. Every
restore point is made with `verify`, so its bytes are compared with the
source snapshot they came from before it is recorded; the demo then
re-checks each one against its digest and reports.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from vsphere_replicator.connection import Connection, connect
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, vddk_standin
from vsphere_replicator.replication import CycleSettings, ReplicaTarget, VDDKDisks, protect, replicate
from vsphere_replicator.replication.failover import cleanup_test_failover, start_test_failover
from vsphere_replicator.replication.restore_points import list_restore_points, verify_restore_point

MiB = 1 << 20
DISK = 32 * MiB
VM = "lab-vm-0001"


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What the demo did, in numbers a reader can check."""

    vm: str
    replica: str
    restore_points: tuple[str, ...]
    bytes_written: int
    bytes_moved: int
    all_points_verified: bool
    test_copy: str
    test_copy_removed: bool


def run_demo(say: Callable[[str], None] = print) -> DemoReport:
    """Start a lab, protect a VM, run three cycles and a test failover; stop the lab."""
    with (
        running_lab(vms=2, disks_per_vm=2, disk_size=DISK) as lab,
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn,
    ):
        return _demo(lab, LabControl(lab), conn, say)


def _demo(lab: LabInfo, control: LabControl, conn: Connection, say: Callable[[str], None]) -> DemoReport:
    say(f"lab up at {lab.url} (TLS verified with {lab.ca_file})")
    access = VDDKDisks(conn, plugin=str(vddk_standin()))
    say(f"disks through VDDK: nbdkit with the lab's stand-in {vddk_standin().name}, nothing mounted")
    settings = CycleSettings(keep=3, verify=True)
    rng = random.Random(2026)

    def guest_writes() -> int:
        total = 0
        for disk in (0, 1, 0):
            length = rng.choice([4096, 256 * 1024, 3 * MiB])
            offset = rng.randrange(0, DISK - length)
            total += len(
                control.write_random(VM, offset=offset, length=length, seed=rng.randrange(1 << 30), disk=disk)
            )
        return total

    written = guest_writes()
    seeded = protect(
        conn,
        VM,
        ReplicaTarget(datastore="secondary-ds"),
        settings=settings,
        replica_access=access,
        source_access=access,
    )
    say(f"{VM}: protected by {seeded.replica} on secondary-ds, restore point {seeded.restore_point}")
    moved = 0
    for _ in range(3):
        written += guest_writes()
        cycle = replicate(
            conn, VM, replica_access=access, source_access=access, verify_access=access, settings=settings
        )
        moved += cycle.bytes_moved
        say(
            f"cycle -> {cycle.restore_point}: {cycle.bytes_changed} bytes changed, "
            f"{cycle.bytes_moved} moved, verified against the source snapshot"
        )
    kept = tuple(p.id for p in list_restore_points(conn, VM))
    checks = [verify_restore_point(conn, VM, access, p) for p in kept]
    verified = bool(checks) and all(c.ok for c in checks)
    say(f"restore points kept: {', '.join(kept)}; each re-read and matched its digest: {verified}")
    test = start_test_failover(conn, VM)
    say(f"test failover: {test.running} running at {test.restore_point}; source and replica untouched")
    removed = cleanup_test_failover(conn, VM) == (test.running,)
    say(f"test copy removed: {removed}")
    return DemoReport(
        vm=VM,
        replica=seeded.replica,
        restore_points=kept,
        bytes_written=written,
        bytes_moved=moved,
        all_points_verified=verified,
        test_copy=test.running,
        test_copy_removed=removed,
    )
