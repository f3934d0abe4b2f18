"""One pass of a point-in-time policy over many VMs on 1, 2 and 4 local dask workers: VMs per minute.

    python3 benchmarks/fleet.py [--vms 500] [--workers 1,2,4] [--threads 2] [--disk-size 16M]
                                [--change 256K] [--latency-ms 0]

A lab of `--vms` VMs (one disk each) is started and the process's
environment pointed at it (the default profile, VSPHERE_REPLICATOR_MOUNTS),
which is what each worker process inherits: a worker logs in with its own
session, as a proxy would. Every VM is protected first (the seeds, on the
largest cluster, reported but not compared). Then, for each worker count,
a `distributed.LocalCluster` of that many worker processes (`--threads`
threads each) is started, `--change` bytes of random data are written to
every VM, and `run_policies(..., once=True, executor=client.get_executor())`
runs one cycle of every VM; the policy file's `limits.total` is the
cluster's thread count, so concurrency grows with the workers. Timed: the
pass, from the first submission to the last record (cluster start-up
excluded).

Printed per worker count: VMs per minute, the ratio to one worker (the
scaling ratio) and the lab's SOAP requests and datastore requests per VM
cycle (the caller's selection and placement reads included, divided over
the cycles). Checked: every cycle ok; every VM has one restore point more
than before the pass (read once at the end); the cycles ran on as many
distinct workers as the cluster had (at least min(workers, VMs)). The exit
status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any

from vsphere_replicator.connection import connect
from vsphere_replicator.inventory import VMSelector, find_vms
from vsphere_replicator.lab import LabControl, LabInfo, running_lab
from vsphere_replicator.policies import LiveEngine, RunRecord, parse_policy_file, run_policies
from vsphere_replicator.policies.fleet import profiler_deadlock_risk
from vsphere_replicator.replication import MountedDatastores
from vsphere_replicator.replication.restore_points import list_restore_points
from vsphere_replicator.replication.sessions import MOUNTS_VARIABLE
from vsphere_replicator.units import parse_size

KiB, MiB = 1 << 10, 1 << 20

POLICY = """\
version: 1
limits: {{total: {total}, per_host: {total}, per_datastore: {total}}}
protections:
  - name: fleet-bench
    select:
      names: ["lab-vm-*"]
    target:
      datastore: secondary-ds
    policy: point-in-time
    settings:
      interval: 1h
      keep: {keep}
"""


def point_lab_environment(lab: LabInfo) -> None:
    """This process's environment names the lab: the workers it starts inherit it."""
    os.environ.update(
        VSPHERE_HOST=lab.host,
        VSPHERE_PORT=str(lab.port),
        VSPHERE_USER=lab.user,
        VSPHERE_PASSWORD=lab.password,
        VSPHERE_CA_FILE=lab.ca_file,
    )
    os.environ[MOUNTS_VARIABLE] = ",".join(f"{k}={v}" for k, v in lab.datastores.items())
    if profiler_deadlock_risk(profiling=True):
        # dask's worker profiler can hang a worker process for good on this Python (CPython #106883:
        # the 100-VM run did, near the end of its seed pass): off in the workers, which inherit this.
        os.environ["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"


def one_pass(lab: LabInfo, workers: int, threads: int, keep: int) -> tuple[list[RunRecord], float]:
    """Start `workers` worker processes, run one pass of the policy through them; (records, seconds)."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.refresh()  # the environment as point_lab_environment left it, passed on to the workers
    policy = parse_policy_file(POLICY.format(total=workers * threads, keep=keep))
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
        connect(environ=os.environ) as conn,
    ):
        client.wait_for_workers(workers, timeout=120)
        profiling = set(client.run(lambda: dask.config.get("distributed.worker.profile.enabled")).values())
        print(f"({workers} workers, dask's worker profiler on: {', '.join(map(str, sorted(profiling)))})")
        engine = LiveEngine(conn, replica_access=MountedDatastores(lab.datastores, conn=conn))
        began = time.monotonic()
        records = run_policies(policy, engine, once=True, executor=client.get_executor(pure=False))
        return records, time.monotonic() - began


def restore_point_counts(lab: LabInfo, vms: list[str]) -> dict[str, int]:
    with connect(environ=os.environ) as conn:
        return {vm: len(list_restore_points(conn, vm)) for vm in vms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, default=500)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare, the first is the base")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker process")
    parser.add_argument("--disk-size", default="16M")
    parser.add_argument("--change", default="256K", help="random bytes written to each VM before a pass")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay the lab adds to every SOAP call")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    change = parse_size(args.change)
    keep = len(counts) + 2
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"check: {what}: {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(what)

    # Flat layers (not the lab's default redo logs): workers write replicas through mounts, so that
    # the figures measure scheduling and vCenter round trips, not VDDK's start-up per disk.
    with running_lab(
        vms=args.vms,
        disks_per_vm=1,
        disk_size=parse_size(args.disk_size),
        latency_ms=args.latency_ms,
        redo_logs=False,
    ) as lab:
        point_lab_environment(lab)
        control = LabControl(lab)
        with connect(environ=os.environ) as conn:
            vms = sorted(vm.name for vm in find_vms(conn, VMSelector(glob="lab-vm-*")))
        print(
            f"{len(vms)} VMs, one {args.disk_size} disk each, {args.change} changed per VM per pass; "
            f"{args.threads} threads per worker; {args.latency_ms} ms added per SOAP call"
        )
        for i, vm in enumerate(vms):
            control.write_random(vm, offset=0, length=change, seed=i)
        seed_records, seed_seconds = one_pass(lab, max(counts), args.threads, keep)
        check(all(r.ok for r in seed_records), f"seed pass: {len(seed_records)} VMs protected")
        print(f"seed pass ({max(counts)} workers): {len(vms) / seed_seconds * 60:.1f} VMs/min")
        base: float | None = None
        rows = []
        for n, workers in enumerate(counts):
            for i, vm in enumerate(vms):
                control.write_random(vm, offset=(1 + n) * change, length=change, seed=1000 * (n + 1) + i)
            before = restore_point_counts(lab, vms)
            control.reset_stats()
            records, seconds = one_pass(lab, workers, args.threads, keep)
            stats: dict[str, Any] = control.stats()
            after = restore_point_counts(lab, vms)
            failed = [r for r in records if not r.ok]
            used = Counter(r.worker for r in records)
            rate = len(records) / seconds * 60
            base = base or rate
            cycles = max(1, len(records))
            rows.append(
                (workers, len(records), seconds, rate, rate / base, stats["soap_requests"] / cycles,
                 stats["folder_requests"] / cycles, len(used))
            )  # fmt: skip
            check(
                not failed,
                f"{workers} workers: every cycle ok" + (f" (first: {failed[0].error})" if failed else ""),
            )
            check(
                all(after[vm] == before[vm] + 1 for vm in vms),
                f"{workers} workers: one new restore point per VM",
            )
            check(
                len(used) >= min(workers, len(vms)), f"{workers} workers: cycles ran on {len(used)} workers"
            )
        print()
        print(
            "| workers | VM cycles | seconds | VMs/min | scaling vs first | SOAP per VM cycle "
            "| /folder per VM cycle | workers used |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for w, c, s, r, ratio, soap, folder, used_n in rows:
            print(f"| {w} | {c} | {s:.1f} | {r:.1f} | {ratio:.2f}x | {soap:.1f} | {folder:.1f} | {used_n} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
