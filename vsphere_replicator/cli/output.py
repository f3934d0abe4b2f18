"""What the commands print: sizes, durations, tables, one-line summaries, JSON, and progress bars.

Every formatter takes the library's own result type (a frozen dataclass)
and returns text; nothing here talks to vCenter. With `--json` a command
prints `plain(result)` instead: the same fields, with datetimes as ISO 8601
strings and durations as seconds.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timedelta
from typing import Never, TextIO, cast

from tqdm import tqdm

from vsphere_replicator.cli.exits import Failure
from vsphere_replicator.policies import RunRecord
from vsphere_replicator.replication import CycleResult, CycleSettings, RestorePoint
from vsphere_replicator.replication.failover import FailoverResult
from vsphere_replicator.replication.leftovers import LeftoverDisk
from vsphere_replicator.replication.plans import PlanReplication, PlanResult
from vsphere_replicator.replication.protection import SettingsChange, UnprotectResult
from vsphere_replicator.replication.restore_points import RestorePointCheck
from vsphere_replicator.replication.status import FAILED_OVER, UNREADABLE, ProtectionStatus
from vsphere_replicator.replication.sweep import SweepResult
from vsphere_replicator.snapshots import OrphanSnapshot
from vsphere_replicator.units import format_duration

# -- values -------------------------------------------------------------------------------------


def size_text(count: int | None) -> str:
    """Bytes for a person: binary units, one decimal (the exact count is in --json); "-" for none."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def seconds_text(seconds: float | None) -> str:
    """A count of seconds, whole ("42s"); "-" for none."""
    return "-" if seconds is None else f"{seconds:.0f}s"


def duration_text(value: timedelta | None) -> str:
    """A duration as a policy file writes it ("1h30m"); "-" for none."""
    return "-" if value is None else format_duration(value)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _disks(keys: Iterable[int]) -> str:
    return ", ".join(str(k) for k in keys)


# -- JSON ---------------------------------------------------------------------------------------


def plain(value: object) -> object:
    """`value` as JSON-ready data: dataclasses as objects, datetimes as ISO 8601, durations in seconds."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def print_json(value: object) -> None:
    """One JSON document on one line of stdout, keys sorted (flushed: `run` prints as it goes)."""
    print(json.dumps(plain(value), sort_keys=True), flush=True)


def emit(as_json: bool, value: object, text: Callable[[], str]) -> None:
    """Print `value` as JSON, or the text a person reads."""
    if as_json:
        print_json(value)
    else:
        print(text())


def error_document(failure: Failure) -> dict[str, object]:
    """What `--json` prints on stdout when a command fails (stderr still gets the one line)."""
    return {"error": failure.message, "exit_code": failure.code, "kind": failure.kind}


# -- replication results ------------------------------------------------------------------------


def cycle_line(result: CycleResult) -> str:
    """One replicate cycle: which restore point, what it moved, and anything unusual about it."""
    if result.confirmed:
        return (
            f"{result.vm} -> {result.replica}: nothing changed; restore point {result.restore_point} "
            f"confirmed current as of {result.created:%Y-%m-%d %H:%M:%S} ({result.seconds:.1f}s)"
        )
    notes = ""
    if result.resumed:
        notes += ", resumed an interrupted cycle"
    if result.full_resync:
        notes += f", full resync of disks {_disks(result.full_resync)}"
    return (
        f"{result.vm} -> {result.replica}: restore point {result.restore_point} "
        f"({size_text(result.bytes_moved)} moved for {size_text(result.bytes_changed)} changed, "
        f"{result.seconds:.1f}s{notes})"
    )


def seed_line(result: CycleResult, adopted: str | None, *, copied: bool = False) -> str:
    """protect: the first restore point, made by a clone, a copy into another vCenter, or adopting a copy."""
    if result.confirmed:
        newest = result.restore_point
        return f"{result.vm} is already protected by {result.replica} (newest restore point {newest})"
    how = f"adopted {adopted} as the seed" if adopted else f"seeded by {'copy' if copied else 'clone'}"
    return (
        f"{result.vm} -> {result.replica}: restore point {result.restore_point} {how} "
        f"(disks {_disks(result.full_resync)}, {size_text(result.bytes_changed)} in use, "
        f"{result.seconds:.1f}s)"
    )


def _nics(result: FailoverResult) -> str:
    if result.resumed:
        return ""  # the NICs were moved (or not) by the run that was interrupted
    if not result.nics:
        return ", NICs left on their networks (none was on a port group the target maps)"
    return "".join(f", {n.label} {n.old} -> {n.new}" for n in result.nics)


def failover_line(result: FailoverResult, vm: str | None = None, what: str | None = None) -> str:
    """A failover (or failback, with `what`): which VM runs now, at which point, and the NICs it moved."""
    name = vm or result.vm
    if result.already_done and result.kind == "failback":
        newest = result.restore_point
        return f"{name}: nothing to fail back: {result.running} runs, protected (newest point {newest})"
    if result.already_done:
        return f"{name}: already failed over; {result.running} runs at {result.restore_point}"
    final = ""
    if result.final_cycle is not None:
        final = f" (final sync moved {size_text(result.final_cycle.bytes_moved)})"
    again = " (continued an interrupted run)" if result.resumed else ""
    return (
        f"{name}: {what or result.kind + ' failover'}, {result.running} running at "
        f"{result.restore_point}{final}{again}{_nics(result)}{_macs(result)}"
    )


def _macs(result: FailoverResult) -> str:
    """A planned failover's NICs: each kept its source's MAC address, or says why not."""
    parts = [f"{m.label} kept {m.mac}" if m.kept else f"{m.label} not kept: {m.reason}" for m in result.macs]
    return f"; MAC addresses: {'; '.join(parts)}" if parts else ""


def plan_lines(result: PlanResult) -> str:
    """failover or failback --plan: each tier in the order it came up, one line per VM."""
    group = f" at consistency group {result.group}" if result.group else ""
    if result.kind == "failback":
        lines = [f"recovery plan {result.plan}: failback"]
        names = [vm for tier in result.tiers for vm in tier]
        tier_of = {vm: number for number, tier in enumerate(result.tiers, start=1) for vm in tier}
        for vm, back in zip(names, result.vms, strict=False):
            lines.append(f"  tier {tier_of[vm]}: {failover_line(back, vm, 'failed back')}")
        return "\n".join(lines)
    lines = [f"recovery plan {result.plan}: {result.kind} failover{group}"]
    by_vm = {r.vm: r for r in result.vms}
    for number, tier in enumerate(result.tiers, start=1):
        for vm in tier:
            if vm in by_vm:
                lines.append(f"  tier {number}: {failover_line(by_vm[vm])}")
    return "\n".join(lines)


def plan_replication_lines(made: PlanReplication) -> str:
    """replicate --plan: a restore point per VM (one group's), or why a VM made none."""
    group = f" (consistency group {made.group})" if made.group else ""
    lines = [f"recovery plan {made.plan}: {len(made.cycles)} restore points{group}"]
    lines += [f"  {c.vm} -> {c.replica}: restore point {c.restore_point}" for c in made.cycles]
    lines += [f"  {vm}: failed: {error}" for vm, error in made.failed]
    return "\n".join(lines)


def reversed_line(vm: str, running: str) -> str:
    """failback --no-switch: the replication now runs from the failed-over VM into the original."""
    return (
        f"{vm}: replication reversed ({running} -> {vm}), not switched; "
        f"finish with: vsphere-replicator failback {vm}"
    )


def _note(s: ProtectionStatus) -> str:
    if s.operation:
        return f"{s.operation}; continue with: {s.next_step}"
    if s.busy:
        return f"busy: {s.busy}"
    return s.last_error or ""


def status_table(found: Sequence[ProtectionStatus]) -> str:
    """status: one row per protected VM, its newest restore point, age, RPO and what needs doing."""
    if not found:
        return "no protected VMs"
    sources = any(s.source_state is not None for s in found)  # two sites: the SOURCE column
    rows = [
        [
            "VM",
            *(["SOURCE"] if sources else []),
            "REPLICA",
            "STATE",
            "POINTS",
            "LATEST",
            "AGE",
            "RPO",
            "OK",
            "NOTE",
        ]
    ]
    for s in found:
        ok = "n/a" if s.state == FAILED_OVER else {True: "yes", False: "NO", None: "-"}[s.compliant]
        rows.append(
            [
                s.vm,
                *([s.source_state or "-"] if sources else []),
                s.replica,
                s.state,
                str(s.restore_points),
                s.latest_point or "-",
                seconds_text(s.age_seconds),
                seconds_text(s.target_rpo_seconds),
                ok,
                _note(s),
            ]
        )
    return table(rows)


def is_stuck(s: ProtectionStatus) -> bool:
    """A protection that needs a person: its last cycle failed, its state is unreadable, or a
    failover or failback is unfinished (status exits 1 for it)."""
    return s.state == UNREADABLE or s.last_error is not None or s.operation is not None


def misses_rpo(s: ProtectionStatus) -> bool:
    """Judged against a target RPO and late; a failed-over VM has no replication whose RPO it could miss."""
    return s.compliant is False and s.state != FAILED_OVER


def restore_points_table(points: Sequence[RestorePoint]) -> str:
    """restore-points: one row per point, oldest first."""
    rows = [["ID", "CREATED", "REPLICA SNAPSHOT", "CONSISTENCY", "MOVED", "CHANGED", "VERIFIABLE"]]
    for p in points:
        rows.append(
            [
                p.id,
                p.created.isoformat(timespec="seconds"),
                p.snapshot,
                "quiesced" if p.quiesced else "crash-consistent",
                size_text(p.bytes_moved),
                size_text(p.bytes_changed),
                "yes" if p.digests else "no",
            ]
        )
    return table(rows)


def verify_document(check: RestorePointCheck) -> dict[str, object]:
    """verify --json: the check with each disk's verdict (`ok` is a property, not a field)."""
    disks = [
        {"replica_key": d.replica_key, "expected": d.expected, "actual": d.actual, "ok": d.ok}
        for d in check.disks
    ]
    return {"vm": check.vm, "restore_point": check.restore_point, "ok": check.ok, "disks": disks}


def verify_line(check: RestorePointCheck) -> str:
    """verify: intact, or which replica disks differ from their recorded digests."""
    if check.ok:
        return (
            f"{check.vm} restore point {check.restore_point}: intact "
            f"({len(check.disks)} disks match their digests)"
        )
    bad = [str(d.replica_key) for d in check.disks if not d.ok]
    return (
        f"{check.vm} restore point {check.restore_point}: CORRUPT "
        f"(replica disks {', '.join(bad)} differ from their digests)"
    )


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One snapshot of ours that `snapshots` lists or sweeps; `kept` says why it was left alone."""

    vm: str
    snapshot: str
    snapshot_moref: str
    created: datetime
    age_seconds: float
    kept: str | None

    @classmethod
    def of(cls, orphan: OrphanSnapshot, kept: str | None = None) -> SnapshotRow:
        return cls(
            vm=orphan.vm,
            snapshot=orphan.snapshot.name,
            snapshot_moref=orphan.snapshot.moref,
            created=orphan.snapshot.created,
            age_seconds=orphan.age.total_seconds(),
            kept=kept,
        )


def snapshot_rows(result: SweepResult) -> list[SnapshotRow]:
    """The snapshots a sweep (or a listing) removed or would remove, then those it spared."""
    return [SnapshotRow.of(o) for o in result.removed] + [
        SnapshotRow.of(s.snapshot, s.reason) for s in result.spared
    ]


def snapshots_text(rows: Sequence[SnapshotRow], verb: str, older_than: timedelta) -> str:
    """snapshots list/sweep: one line per snapshot, or what there was none of."""
    lines = []
    for r in rows:
        what = f"{r.vm}: {r.snapshot} ({r.age_seconds:.0f}s old)"
        lines.append(f"kept {what}: {r.kept}" if r.kept else f"{verb} {what}".strip())
    if lines:
        return "\n".join(lines)
    if not older_than:
        return "no snapshots of ours"
    return f"no snapshots of ours older than {format_duration(older_than)}"


def disks_text(found: Sequence[LeftoverDisk], *, sweep: bool) -> str:
    """disks list/sweep: each unreferenced disk file and what was (or would be) done with it."""
    lines = []
    for d in found:
        if d.kept:
            lines.append(f"kept {d.replica}: {d.file}: {d.kept}")
        else:
            verb = "removed" if d.removed else "would remove" if sweep else "unreferenced"
            lines.append(f"{verb} {d.replica}: {d.file}")
    return "\n".join(lines) or "no disk in a replica's folders is unreferenced"


def _setting_text(value: object) -> str:
    if value is None:
        return "-"
    return format_duration(value) if isinstance(value, timedelta) else str(value)


def settings_table(change: SettingsChange) -> str:
    """settings: every recorded setting before and after, the changed ones marked."""
    rows = [["SETTING", "BEFORE", "AFTER", ""]]
    for f in fields(CycleSettings):
        before, after = getattr(change.before, f.name), getattr(change.after, f.name)
        mark = "changed" if f.name in change.changed else ""
        rows.append([f.name, _setting_text(before), _setting_text(after), mark])
    return f"{change.vm} ({change.replica}):\n" + table(rows)


def unprotect_line(result: UnprotectResult) -> str:
    """unprotect: what became of the replica."""
    if result.deleted:
        return f"{result.vm}: protection ended, replica {result.replica} deleted"
    if result.failed_over:
        return f"{result.vm}: protection ended; {result.replica} runs on as its production VM"
    return (
        f"{result.vm}: protection ended, {result.replica} kept as a plain VM at its newest restore "
        f"point ({result.snapshots_removed} restore-point snapshots consolidated)"
    )


def run_record_line(record: RunRecord) -> str:
    """run: one cycle of one VM, as it finishes."""
    outcome = record.summary if record.ok else f"FAILED {record.error}"
    return f"{record.finished:%H:%M:%S} {record.vm} [{record.protection}/{record.policy}] {outcome}"


# -- progress -----------------------------------------------------------------------------------


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


class Progress:
    """A progress bar on stderr for a library call's `on_progress(done, total)`: bytes, rate and ETA.

    Disabled (every call a no-op) unless `enabled`; commands enable it only
    on a terminal and never with --json. A `total` that changes, or a `done`
    that goes back, starts a new bar: a planned failover runs two cycles, a
    failback copies disk after disk. A bar closes when `done` reaches
    `total`, so its rate and elapsed time are the transfer's own, not those
    of what the call does afterwards (a snapshot, a commit). `percent` is for
    calls that report a percentage (a clone task).
    """

    def __init__(self, label: str, *, enabled: bool, stream: TextIO) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream
        self._bar: tqdm[Never] | None = None
        self._finished: tuple[int, str] | None = None

    def __call__(self, done: int, total: int) -> None:
        self._show(done, total, "B")

    def percent(self, value: int) -> None:
        self._show(value, 100, "%")

    def _show(self, done: int, total: int, unit: str) -> None:
        if not self.enabled or total <= 0:
            return
        done = min(done, total)
        if self._bar is None and self._finished == (total, unit) and done == total:
            return  # the same end reported again
        bar = self._bar
        if bar is None or bar.total != total or bar.unit != unit or done < bar.n:
            self.close()
            known = _columns(self.stream) > 0  # a terminal that reports no width gets 80 columns
            bar = tqdm(
                total=total,
                initial=done,  # a resumed transfer: the rate counts only what this run moves
                desc=self.label,
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024,
                # A percentage has no rate worth showing: how long so far, and how long still.
                bar_format=None if unit == "B" else "{l_bar}{bar}| [{elapsed}<{remaining}]",
                file=self.stream,
                ncols=None if known else 80,
                dynamic_ncols=known,
                leave=True,
            )
            self._bar = bar
        bar.update(done - bar.n)
        if done == total:  # the transfer is over: its rate and time stay as they were, not what follows
            self._finished = (total, unit)
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _AboveTheBar:
    """stderr while a bar is shown: each complete line (a log warning) is written above the bar."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            tqdm.write(line, file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def drain(self) -> None:
        """Write what is left of an unfinished line."""
        if self._pending:
            self.stream.write(self._pending)
            self._pending = ""


@contextmanager
def progress(label: str, *, enabled: bool) -> Iterator[Progress]:
    """A Progress on the current stderr; while it runs, other stderr lines go above its bar."""
    stream = sys.stderr
    bar = Progress(label, enabled=enabled, stream=stream)
    if not enabled:
        yield bar
        return
    above = _AboveTheBar(stream)
    sys.stderr = cast(TextIO, above)
    try:
        yield bar
    finally:
        bar.close()
        sys.stderr = stream
        above.drain()
