"""RPO held by the continuous policy while the guest writes steadily, and what each cycle moved.

    python3 benchmarks/rpo.py [--disk-size 1G] [--seconds 60] [--write-rate 2MiB/s] [--target-rpo 30s]
                              [--latency-ms 0]

One lab VM is protected through a policy file (`continuous`, replica on
`secondary-ds`, replica disks written through VDDK — the lab's stand-in,
one nbdkit per disk and cycle, as on ESXi, where a replica's current layer
is a redo log — and the source read over the datastore HTTP endpoint as by
default) and
`run_policies` watches it in a thread. Once the seed's restore point exists,
a writer thread writes random data as the guest would (chunks at random
aligned offsets, paced to the write rate) for `--seconds`, while a sampler
thread reads the latest restore point every `--sample-every` seconds over
its own connection and records its age: the RPO held at that moment. When
the writer stops, the runner is left to finish one more cycle that started
after the last write (so every byte written is in some restore point), then
asked to stop.

Printed: cycles, the RPO samples (worst, median, p95) against the target
and the share of samples within it, and the bytes: guest bytes written (the
baseline), bytes CBT reported changed and bytes the cycles moved, summed
over every incremental restore point. Checked: the changed bytes lie
between the distinct CBT blocks the writes touched and the blocks touched
per write (summed); the latest restore point holds the source's final bytes
(the disks' chains compared by qemu-img); no snapshot of ours is left on the source once
the runner stopped. The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vsphere_replicator.connection import Connection, connect
from vsphere_replicator.inventory import VMSelector, get_vm, snapshot_disks
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, vddk_standin
from vsphere_replicator.policies import LiveEngine, RunRecord, parse_policy_file, run_policies
from vsphere_replicator.replication import VDDKDisks
from vsphere_replicator.replication.restore_points import list_restore_points, replica_state
from vsphere_replicator.replication.state import RestorePoint
from vsphere_replicator.snapshots import find_orphans
from vsphere_replicator.units import format_duration, parse_duration, parse_rate, parse_size

KiB, MiB = 1 << 10, 1 << 20

POLICY = """\
version: 1
protections:
  - name: rpo-bench
    select:
      names: ["{vm}"]
    target:
      datastore: secondary-ds
    policy: continuous
    settings:
      target_rpo: {target_rpo}
      keep: {keep}
"""


def rate(text: str) -> int:
    """Bytes per second from "2MiB/s" or a plain size ("2M", "2097152")."""
    return parse_rate(text) if text.strip().lower().endswith("/s") else parse_size(text)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of non-empty `values`."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))]


@dataclass
class Records:
    """The runner's records as they come (on_record runs in the runner's thread)."""

    items: list[RunRecord] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, record: RunRecord) -> None:
        with self.changed:
            self.items.append(record)
            self.changed.notify_all()

    def wait_for(self, ok_started_after: datetime | None, timeout: float) -> RunRecord | None:
        """The first successful record that started after the given moment (any, for None), or None."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for rec in self.items:
                    if rec.ok and (ok_started_after is None or rec.started >= ok_started_after):
                        return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def snapshot(self) -> list[RunRecord]:
        with self.changed:
            return list(self.items)


@dataclass
class Writes:
    """What the writer did: (offset, length) of every write, their total, and how long it wrote."""

    extents: list[tuple[int, int]] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0
    error: str | None = None


def write_steadily(
    lab: LabInfo,
    vm: str,
    *,
    size: int,
    chunk: int,
    align: int,
    bytes_per_s: int,
    seconds: float,
    seed: int,
    out: Writes,
) -> None:
    """Write `chunk`-byte random blocks at random `align`ed offsets, paced to `bytes_per_s`, for `seconds`."""
    control = LabControl(lab, timeout=30.0)
    rng = random.Random(seed)
    slots = (size - chunk) // align + 1
    started = time.monotonic()
    deadline = started + seconds
    try:
        while (now := time.monotonic()) < deadline:
            due = started + out.total / bytes_per_s
            if due > now:
                time.sleep(min(due, deadline) - now)
                continue
            offset = rng.randrange(slots) * align
            control.write_random(vm, offset=offset, length=chunk)
            out.extents.append((offset, chunk))
            out.total += chunk
    except Exception as exc:  # reported with the figures; the run goes on to stop cleanly
        out.error = f"{type(exc).__name__}: {exc}"
    out.seconds = time.monotonic() - started


@dataclass
class Samples:
    """(age of the latest restore point in seconds) per tick, and every restore point seen, by id."""

    ages: list[float] = field(default_factory=list)
    points: dict[str, RestorePoint] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def sample_rpo(lab: LabInfo, vm: str, every: float, stop: threading.Event, out: Samples) -> None:
    """Until `stop`: read the restore points on a connection of its own; record the latest one's age."""
    with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn:
        next_tick = time.monotonic()
        while not stop.is_set():
            try:
                points = list_restore_points(conn, vm)
            except Exception as exc:  # counted and shown; one bad read must not end the sampling
                out.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                out.ages.append((datetime.now(UTC) - points[-1].current_as_of).total_seconds())
                out.points.update((p.id, p) for p in points)
            next_tick += every
            stop.wait(max(0.0, next_tick - time.monotonic()))


def block_bounds(extents: list[tuple[int, int]], block: int) -> tuple[int, int]:
    """(distinct blocks touched, blocks touched per write summed), in bytes: least and most CBT reports."""
    distinct: set[int] = set()
    per_write = 0
    for offset, length in extents:
        blocks = range(offset // block, (offset + length - 1) // block + 1)
        distinct.update(blocks)
        per_write += len(blocks)
    return len(distinct) * block, per_write * block


def same_chain_bytes(lab: LabInfo, a: str, b: str) -> bool:
    """Whether two disk layers hold the same bytes, each read through its chain by qemu-img."""

    def descriptor(file_name: str) -> str:
        ds, rel = file_name[1:].split("] ", 1)
        return str(Path(lab.datastores[ds]) / rel)

    compare = ["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "vmdk", descriptor(a), descriptor(b)]
    return subprocess.run(compare, check=False, timeout=600).returncode == 0


def replica_matches_source(conn: Connection, vm: str, lab: LabInfo) -> bool:
    """Whether the latest restore point holds the source's current bytes, disk by disk."""
    state = replica_state(conn, vm)
    frozen = {d.key: d for d in snapshot_disks(conn, state.latest.snapshot)}
    current = {d.key: d for d in get_vm(conn, vm).disks}
    return all(
        same_chain_bytes(lab, current[d.source_key].file_name, frozen[d.replica_key].file_name)
        for d in state.disks
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vms", type=int, default=4, help="VMs in the lab (one is protected)")
    parser.add_argument("--disk-size", default="1G")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the guest writes")
    parser.add_argument("--write-rate", default="2MiB/s", help="guest bytes per second")
    parser.add_argument("--chunk", default="256K", help="bytes per guest write")
    parser.add_argument("--align", default="4K", help="guest writes start at multiples of this")
    parser.add_argument("--target-rpo", default="30s")
    parser.add_argument("--keep", type=int, default=5, help="restore points the policy keeps")
    parser.add_argument("--cbt-block", default="64K", help="the lab's change-tracking granularity")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between RPO samples")
    parser.add_argument("--seed-timeout", type=float, default=600.0, help="seconds the seed may take")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the write offsets")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay the lab adds to every SOAP call")
    args = parser.parse_args()
    size, chunk, align = parse_size(args.disk_size), parse_size(args.chunk), parse_size(args.align)
    cbt_block, write_rate = parse_size(args.cbt_block), rate(args.write_rate)
    target = parse_duration(args.target_rpo)
    if not 0 < chunk <= size or align <= 0 or write_rate <= 0 or args.seconds <= 0:
        parser.error("need 0 < chunk <= disk size, a positive alignment, write rate and duration")
    vm = "lab-vm-0001"
    policy_file = parse_policy_file(
        POLICY.format(vm=vm, target_rpo=format_duration(target), keep=args.keep), "<rpo benchmark>"
    )
    # Waits that end a phase: each bounded, so a stuck cycle fails the run instead of hanging it.
    drain_timeout = max(60.0, 4 * target.total_seconds())
    stop_timeout = max(60.0, 4 * target.total_seconds())
    checks: list[tuple[str, bool]] = []

    with (
        running_lab(vms=args.vms, disk_size=size, cbt_block=cbt_block, latency_ms=args.latency_ms) as lab,
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn,
    ):
        engine = LiveEngine(conn, replica_access=VDDKDisks(conn, plugin=str(vddk_standin())))
        records = Records()
        stop_runner = threading.Event()
        runner_error: list[BaseException] = []

        def run() -> None:
            try:
                run_policies(policy_file, engine, once=False, stop=stop_runner, on_record=records.add)
            except BaseException as exc:  # shown after the run; the main thread must not wait forever
                runner_error.append(exc)

        runner = threading.Thread(target=run, name="rpo-runner", daemon=True)
        seed_started = time.monotonic()
        runner.start()
        seeded = records.wait_for(None, args.seed_timeout)
        seed_seconds = time.monotonic() - seed_started
        if seeded is None:
            stop_runner.set()
            runner.join(stop_timeout)
            failures = [r.error for r in records.snapshot() if not r.ok]
            print(f"the seed did not finish within {args.seed_timeout:.0f} s: {runner_error or failures}")
            return 1
        seed_points = {p.id for p in list_restore_points(conn, vm)}

        writes, samples = Writes(), Samples()
        stop_sampling = threading.Event()
        writer = threading.Thread(
            target=write_steadily,
            args=(lab, vm),
            kwargs={
                "size": size,
                "chunk": chunk,
                "align": align,
                "bytes_per_s": write_rate,
                "seconds": args.seconds,
                "seed": args.seed,
                "out": writes,
            },
            name="rpo-writer",
            daemon=True,
        )
        sampler = threading.Thread(
            target=sample_rpo,
            args=(lab, vm, args.sample_every, stop_sampling, samples),
            name="rpo-sampler",
            daemon=True,
        )
        control = LabControl(lab)
        control.reset_stats()
        sampler.start()
        writer.start()
        writer.join(args.seconds + 60)  # one write may take the lab's timeout (30 s) after the deadline
        writes_ended = datetime.now().astimezone()
        lab_stats = control.stats()
        stop_sampling.set()
        sampler.join(30)
        checks.append(("writer and sampler stopped", not writer.is_alive() and not sampler.is_alive()))

        # The cycle that captures the last writes: one that started after them.
        drained = records.wait_for(writes_ended, drain_timeout)
        checks.append(
            (f"a cycle started after the last write finished within {drain_timeout:.0f} s", bool(drained))
        )
        stop_runner.set()
        runner.join(stop_timeout)
        checks.append((f"the policy runner stopped within {stop_timeout:.0f} s", not runner.is_alive()))
        if runner_error:
            checks.append((f"the policy runner raised {runner_error[0]!r}", False))

        compare_started = time.monotonic()
        matches = replica_matches_source(conn, vm, lab)
        compared = f"compared in {time.monotonic() - compare_started:.1f} s"
        checks.append((f"the latest restore point holds the source's final bytes ({compared})", matches))
        final = list_restore_points(conn, vm)
        samples.points.update((p.id, p) for p in final)
        orphans = find_orphans(conn, older_than=timedelta(0), selector=VMSelector(name=vm))
        checks.append(
            (
                f"no snapshot of ours left on {vm}"
                + (f" (found {', '.join(o.snapshot.name for o in orphans)})" if orphans else ""),
                not orphans,
            )
        )

    every = records.snapshot()
    ok = [r for r in every if r.ok]
    failed = [r for r in every if not r.ok]
    incremental = [r for r in ok if r is not seeded]
    in_window = [r for r in incremental if r.finished <= writes_ended]
    durations = [(r.finished - r.started).total_seconds() for r in incremental]
    points = [p for pid, p in sorted(samples.points.items()) if pid not in seed_points]
    changed = sum(p.bytes_changed for p in points)
    moved = sum(p.bytes_moved for p in points)
    written = writes.total
    least, most = block_bounds(writes.extents, cbt_block)
    target_s = target.total_seconds()
    ages = samples.ages

    # A cycle that finds nothing changed confirms the newest point instead of making one, so
    # points <= cycles; every point made was seen when their numbers have no gap.
    numbers = sorted(int(p.id.rsplit("-", 1)[1]) for p in points)
    checks.append(
        (
            f"every incremental restore point seen ({len(points)}, from {len(incremental)} cycles)",
            numbers == list(range(2, 2 + len(numbers))) and len(points) <= len(incremental),
        )
    )
    checks.append(("no failed cycle", not failed))
    checks.append(("no failed write", writes.error is None))
    checks.append((f"RPO samples taken ({len(ages)}, {len(samples.errors)} failed reads)", bool(ages)))
    checks.append(
        (
            f"changed bytes within the blocks the writes touched [{least}, {most}]",
            least <= changed <= most,
        )
    )

    print(
        f"disk {size // MiB} MiB, {args.vms} VMs, {vm} protected (continuous, target RPO "
        f"{format_duration(target)}, keep {args.keep}); guest writes of {chunk // KiB} KiB at "
        f"{align // KiB} KiB-aligned random offsets, {write_rate / MiB:.2f} MiB/s for {args.seconds:.0f} s; "
        f"CBT block {cbt_block // KiB} KiB; {args.latency_ms} ms added per SOAP call"
    )
    print(f"seed: {seed_seconds:.1f} s ({seeded.summary})")
    cycle_line = (
        f"cycles completed: {len(incremental)} incremental ({len(in_window)} while writing, "
        f"{len(incremental) - len(in_window)} after), {len(failed)} failed"
    )
    if durations:
        cycle_line += f"; cycle seconds median {statistics.median(durations):.2f}, max {max(durations):.2f}"
    print(cycle_line)
    if ages:
        within = sum(age <= target_s for age in ages) / len(ages)
        worst, median, p95 = max(ages), statistics.median(ages), percentile(ages, 0.95)
        print(
            f"RPO held (age of the latest restore point, {len(ages)} samples every "
            f"{args.sample_every:g} s over {writes.seconds:.1f} s): worst {worst:.1f} s, median "
            f"{median:.1f} s, p95 {p95:.1f} s; target {target_s:.0f} s"
        )
        print(f"RPO compliance: {within:.1%} of samples within the target")
    if failed:
        print(f"first failure: {failed[0].error}")
    if in_window:
        per_cycle = sorted(lab_stats["methods"].items(), key=lambda item: -item[1])[:6]
        print(
            f"lab requests while writing, per cycle finished ({len(in_window)}; the sampler's reads "
            f"included): SOAP {lab_stats['soap_requests'] / len(in_window):.1f} ("
            + ", ".join(f"{name} {count / len(in_window):.1f}" for name, count in per_cycle)
            + f"), datastore /folder {lab_stats['folder_requests'] / len(in_window):.1f}"
        )
    print(
        f"bytes: written by the guest {written / MiB:.2f} MiB "
        f"({written / max(writes.seconds, 1e-9) / MiB:.2f} MiB/s achieved), "
        f"changed (CBT) {changed / MiB:.2f} MiB, moved {moved / MiB:.2f} MiB"
    )
    print(
        f"ratios: changed/moved {changed / moved if moved else float('nan'):.3f}, "
        f"moved/written {moved / written if written else float('nan'):.3f} "
        f"(block bounds: distinct blocks/written {least / written if written else float('nan'):.3f}, "
        f"per-write blocks/written {most / written if written else float('nan'):.3f})"
    )
    if ages:
        met = max(ages) <= target_s
        print(
            f"goal: worst RPO <= target ({target_s:.0f} s): {'met' if met else 'NOT met'} ({max(ages):.1f} s)"
        )
    for name, passed in checks:
        print(f"check: {name}: {'ok' if passed else 'FAILED'}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
