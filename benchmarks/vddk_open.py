"""What opening a disk through VDDK costs per disk, against a plain nbdkit in the same run.

    python3 benchmarks/vddk_open.py [--rounds 30] [--plugin PATH ...]

The engine starts one `nbdkit vddk` per disk it opens (two sides, every
cycle), so the start-up of the plugin is paid on every disk of every cycle.
Each round opens the first disk of a lab VM's snapshot through the
library's `VDDKDisks` (nbdkit starting the plugin, which logs in and checks
the VM, snapshot and file against the lab), reads 4 KiB and closes it
(nbdkit stopped, the lab's disk session ended); the baseline does the same
through `nbdkit file` serving the same flat extent, with the same NBD client.
Rounds alternate in order; the medians and their ratio are printed.

`--plugin` (repeatable) measures other stand-in scripts too, e.g. an older
version saved from git, in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vsphere_replicator.connection import connect
from vsphere_replicator.inventory import get_vm, snapshot_disks
from vsphere_replicator.lab import running_lab, vddk_standin
from vsphere_replicator.replication import VDDKDisks
from vsphere_replicator.snapshots import create_snapshot
from vsphere_replicator.transport import NBDEndpoint
from vsphere_replicator.transport.http import flat_extent_path
from vsphere_replicator.transport.nbd import NBDBlockDevice


def timed(open_read_close: Callable[[], None]) -> float:
    began = time.perf_counter()
    open_read_close()
    return time.perf_counter() - began


def plain_nbdkit(extent: Path, scratch: Path) -> None:
    """nbdkit's file plugin on the extent, read-only: started, waited for, read, stopped."""
    sock = scratch / "plain.sock"
    sock.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            "nbdkit",
            "--foreground",
            "--exit-with-parent",
            "--readonly",
            "--unix",
            str(sock),
            "file",
            str(extent),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # the same wait as the library's: the socket, then a connect
            if sock.exists():
                try:
                    device = NBDBlockDevice(NBDEndpoint(socket_path=str(sock)), connections=4)
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("nbdkit file did not serve")
            time.sleep(0.005)
        device.read(0, 4096)
        device.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--plugin", action="append", default=[], help="a stand-in script to measure too")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="vr-bench-") as scratch_dir,
        running_lab(vms=1, disk_size=8 << 20) as lab,
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn,
    ):
        scratch = Path(scratch_dir)
        vm = get_vm(conn, "lab-vm-0001")
        snapshot = create_snapshot(conn, vm, "bench").snapshot
        disk = snapshot_disks(conn, snapshot.moref)[0]
        ds, rel = flat_extent_path(disk.file_name)
        extent = Path(lab.datastores[ds]) / rel

        def through(plugin: str) -> Callable[[], None]:
            access = VDDKDisks(conn, plugin=plugin)

            def run() -> None:
                source = access.source(disk, vm=vm.moref, snapshot=snapshot.moref)
                try:
                    source.read(0, 4096)
                finally:
                    source.close()

            return run

        runs: dict[str, Callable[[], None]] = {"nbdkit file": lambda: plain_nbdkit(extent, scratch)}
        runs["vddk, the stand-in"] = through(str(vddk_standin()))
        runs.update({f"vddk, {plugin}": through(plugin) for plugin in args.plugin})
        for run in runs.values():
            run()  # warm: the lab's first login, the page cache
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                seconds[name].append(timed(runs[name]))
    base = statistics.median(seconds["nbdkit file"])
    print(f"open + 4 KiB read + close, median of {args.rounds} rounds (order alternating)")
    print(f"{'median ms':>9} | {'ratio to nbdkit file':>20} | path")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{median * 1000:9.1f} | {median / base:19.2f}x | {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
