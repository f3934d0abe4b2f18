"""Inventory read: the library against the per-VM attribute walk most pyVmomi scripts do.

    python3 benchmarks/inventory.py [--vms 1000] [--latency-ms 0]

Against a lab of `--vms` VMs (about 10% of them given one or two snapshots
first, with plain pyVmomi), it reads every VM's name, power state, disks and
snapshot tree twice:

* library: `connect()` then `read_inventory()`;
* baseline: `SmartConnect`, a container view of `vim.VirtualMachine` over the
  root folder, then per VM `vm.name`, `vm.runtime.powerState`, the virtual
  disks of `vm.config.hardware.device` (capacity and file name) and
  `vm.snapshot` (its `rootSnapshotList` walked).

Round trips are the SOAP requests the lab served between login and the end of
the read (its statistics are reset right after each login); time is wall time
over the same span. Both reads must agree on (name, power state, number of
disks, number of snapshots) for every VM, or the script exits with status 1.
Whether the goals hold (library: at most 5 round trips, at least 20x faster
than the baseline) is reported, not enforced.
"""

from __future__ import annotations

import argparse
import random
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from vsphere_replicator.connection import connect
from vsphere_replicator.inventory import read_inventory
from vsphere_replicator.lab import LabControl, LabInfo, running_lab

MAX_ROUND_TRIPS = 5
MIN_SPEEDUP = 20.0
SNAPSHOT_SHARE = 0.10

# (name, power state, number of disks, number of snapshots)
Row = tuple[str, str, int, int]


def plain_connect(lab: LabInfo) -> Any:
    """Log in the way a typical pyVmomi script does, verifying TLS against the lab's CA."""
    context = ssl.create_default_context(cafile=lab.ca_file)
    return SmartConnect(host=lab.host, user=lab.user, pwd=lab.password, port=lab.port, sslContext=context)


def add_snapshots(lab: LabInfo, vms: int, seed: int = 1) -> tuple[int, int]:
    """Give about SNAPSHOT_SHARE of the VMs one or two (chained) snapshots; (VMs, snapshots)."""
    si = plain_connect(lab)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            machines = sorted(view.view, key=lambda vm: vm.name)
        finally:
            view.Destroy()
        rng = random.Random(seed)
        chosen = rng.sample(machines, max(1, round(vms * SNAPSHOT_SHARE)))
        taken = 0
        for vm in chosen:
            for n in range(rng.choice((1, 2))):
                WaitForTask(
                    vm.CreateSnapshot_Task(
                        name=f"bench-{n + 1}", description="inventory benchmark", memory=False, quiesce=False
                    ),
                    si=si,
                )
                taken += 1
        return len(chosen), taken
    finally:
        Disconnect(si)


def walk(nodes: Sequence[Any] | None) -> Iterator[Any]:
    for node in nodes or []:
        yield node
        yield from walk(node.childSnapshotList)


def baseline_read(si: Any) -> list[Row]:
    """The per-VM attribute walk: each property access below is a round trip of its own."""
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    rows = []
    try:
        for vm in view.view:
            name = vm.name
            power_state = vm.runtime.powerState
            disks = [
                (d.capacityInBytes, d.backing.fileName)
                for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualDisk)
            ]
            snapshot = vm.snapshot
            snapshots = [(s.name, s.createTime) for s in walk(snapshot.rootSnapshotList)] if snapshot else []
            rows.append((name, str(power_state), len(disks), len(snapshots)))
    finally:
        view.Destroy()
    return rows


def library_read(conn: Any) -> list[Row]:
    return [
        (vm.name, vm.power_state, len(vm.disks), sum(1 for _ in vm.all_snapshots()))
        for vm in read_inventory(conn)
    ]


def measure(control: LabControl, read: Callable[[], list[Row]]) -> tuple[list[Row], int, float]:
    """(rows, SOAP round trips, seconds) of `read`, the session already logged in."""
    control.reset_stats()
    started = time.perf_counter()
    rows = read()
    seconds = time.perf_counter() - started
    return rows, int(control.stats()["soap_requests"]), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vms", type=int, default=1000, help="VMs in the lab (default 1000)")
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="delay the lab adds to every SOAP call, as a remote vCenter would",
    )
    args = parser.parse_args()
    if args.vms < 1:
        parser.error("--vms must be at least 1")

    with running_lab(vms=args.vms, disks_per_vm=1, disk_size=1 << 20, latency_ms=args.latency_ms) as lab:
        control = LabControl(lab)
        with_snapshots, snapshots = add_snapshots(lab, args.vms)

        si = plain_connect(lab)
        try:
            base_rows, base_trips, base_seconds = measure(control, lambda: baseline_read(si))
        finally:
            Disconnect(si)

        with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn:
            lib_rows, lib_trips, lib_seconds = measure(control, lambda: library_read(conn))

    print(
        f"{args.vms} VMs, 1 disk each; {with_snapshots} VMs with {snapshots} snapshots in all;"
        f" {args.latency_ms} ms added per SOAP call"
    )
    header = ("approach", "round trips", "seconds")
    print(f"{header[0]:<10} | {header[1]:>11} | {header[2]:>9}")
    print(f"{'-' * 10}-+-{'-' * 11}-+-{'-' * 9}")
    for approach, trips, seconds in (
        ("baseline", base_trips, base_seconds),
        ("library", lib_trips, lib_seconds),
    ):
        print(f"{approach:<10} | {trips:>11} | {seconds:>9.3f}")
    time_ratio = base_seconds / lib_seconds
    trip_ratio = base_trips / lib_trips if lib_trips else float("inf")
    print(f"baseline/library: time {time_ratio:.1f}x, round trips {trip_ratio:.1f}x")
    trips_ok = lib_trips <= MAX_ROUND_TRIPS
    speed_ok = time_ratio >= MIN_SPEEDUP
    print(
        f"goal: library <= {MAX_ROUND_TRIPS} round trips after login: "
        f"{'met' if trips_ok else 'NOT met'} ({lib_trips})"
    )
    print(
        f"goal: library >= {MIN_SPEEDUP:.0f}x faster than baseline: "
        f"{'met' if speed_ok else 'NOT met'} ({time_ratio:.1f}x)"
    )

    base_set, lib_set = set(base_rows), set(lib_rows)
    if base_set != lib_set or len(base_rows) != len(lib_rows) or len(lib_rows) != args.vms:
        print(
            f"MISMATCH: baseline read {len(base_rows)} VMs, library {len(lib_rows)}, lab has {args.vms}",
            file=sys.stderr,
        )
        for row in sorted(base_set - lib_set)[:10]:
            print(f"  only in baseline: {row}", file=sys.stderr)
        for row in sorted(lib_set - base_set)[:10]:
            print(f"  only in library:  {row}", file=sys.stderr)
        return 1
    print(f"results: identical for all {len(lib_rows)} VMs (name, power state, disks, snapshots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
