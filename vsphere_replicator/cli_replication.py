"""The replication commands of `vsphere-replicator`: protect, replicate, status, restore-points, ...

Connection: the VSPHERE_* environment profile, `--profile NAME` (reads
VSPHERE_<NAME>_HOST and friends), or, when neither names a vCenter, the lab
that `lab up` started. Replica disks are written through datastores mounted
here: `--mount DS=DIR` (repeatable), VSPHERE_REPLICATOR_MOUNTS, or the lab's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta
from typing import Any

from vsphere_replicator.checks import check_fraction, shown
from vsphere_replicator.connection import Connection, connect, profile_prefix
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.lab import lab_status
from vsphere_replicator.policies import LiveEngine, PolicyFileError, load_policy_file, run_policies
from vsphere_replicator.replication.access import MountedDatastores, parse_mounts
from vsphere_replicator.replication.cycle import IncrementalRefused, replicate
from vsphere_replicator.replication.restore_points import list_restore_points, verify_restore_point
from vsphere_replicator.replication.seed import protect
from vsphere_replicator.replication.settings import (
    CHUNK_UNIT,
    MAX_CHECKPOINT,
    MAX_CHUNK,
    MAX_KEEP,
    CycleSettings,
    ReplicaTarget,
    apply_overrides,
)
from vsphere_replicator.replication.status import FAILED_OVER, UNREADABLE, protection_status
from vsphere_replicator.replication.sweep import sweep_snapshots
from vsphere_replicator.units import format_duration, format_size, parse_size
from vsphere_replicator.units import parse_duration as parse_duration_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RPO_MISSED, EXIT_REFUSED, EXIT_BUSY = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_FAILED: "failed: vCenter refused or could not be reached, a fault, something not found, "
    "a corrupt restore point",
    EXIT_USAGE: "usage or invalid input (bad option or value, invalid policy file, a request that "
    "cannot be done as asked); nothing was changed",
    EXIT_RPO_MISSED: "status: at least one protected VM misses its target RPO",
    EXIT_REFUSED: "replicate: the incremental was refused by --max-change-share; nothing was changed",
    EXIT_BUSY: "busy: another operation holds the VM's lease; nothing was changed, try again later",
    EXIT_INTERNAL: "internal error (a bug: please report it with the command that caused it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
MAX_CYCLES = 1_000_000


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '1h30m', '7d': the durations a policy file takes, so the two never disagree."""
    try:
        return parse_duration_text(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def age_option(text: str) -> timedelta:
    """A duration that may also be zero ("0s": any age), for --older-than."""
    if text.strip() in ("0", "0s", "0m", "0h", "0d"):
        return timedelta(0)
    return parse_duration(text)


def int_option(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], or a one-line error naming the range."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:  # also thousands of digits, which int() refuses to convert
            if not text.strip().lstrip("+-").isdigit():
                raise argparse.ArgumentTypeError(f"not a whole number: {shown(text)}") from None
            number = high + 1
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {shown(text)}")
        return number

    return parse


def size_option(low: int, high: int, multiple: int = 1) -> Callable[[str], int]:
    """An argparse type: a size (64M, 1G, 4096) in [low, high] and a multiple of `multiple`."""

    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not low <= value <= high or value % multiple:
            every = f" in steps of {format_size(multiple)}" if multiple > 1 else ""
            raise argparse.ArgumentTypeError(
                f"must be from {format_size(low)} to {format_size(high)}{every}, not {shown(text)}"
            )
        return value

    return parse


def fraction_option(text: str) -> float:
    """An argparse type: a share in (0, 1], such as 0.25."""
    try:
        return check_fraction(float(text), "the share")
    except (ValueError, InvalidInput):
        raise argparse.ArgumentTypeError(
            f"must be a number above 0 and at most 1, not {text[:30]!r}"
        ) from None


def _size(count: int | None) -> str:
    """Bytes for a person: binary units, one decimal (the exact count is in --json)."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _environment(profile: str | None) -> dict[str, str]:
    """The variables to connect with: the environment (for a named or the default profile) or the lab's.

    A named profile is read by `settings_from(profile=...)` from its own
    VSPHERE_<NAME>_* variables only, never completed from the default ones.
    """
    env = dict(os.environ)
    if profile:
        prefix = profile_prefix(profile)
        if not env.get(prefix + "HOST"):
            raise InvalidInput(f"profile {profile!r} is not set: export {prefix}HOST, {prefix}USER, ...")
        return env
    if env.get("VSPHERE_HOST"):
        return env
    lab = lab_status(env.get("VR_LAB_STATE_DIR"))
    if lab is None:
        raise InvalidInput("no vCenter given: set VSPHERE_HOST (and friends), --profile, or start the lab")
    return {
        "VSPHERE_HOST": lab.host,
        "VSPHERE_PORT": str(lab.port),
        "VSPHERE_USER": lab.user,
        "VSPHERE_PASSWORD": lab.password,
        "VSPHERE_CA_FILE": lab.ca_file,
        "VSPHERE_REPLICATOR_MOUNTS": ",".join(f"{k}={v}" for k, v in lab.datastores.items()),
    }


@contextmanager
def _session(args: argparse.Namespace) -> Iterator[tuple[Connection, Mapping[str, str]]]:
    env = _environment(args.profile)
    with connect(environ=env, profile=args.profile or None) as conn:
        yield conn, env


def _mounts(args: argparse.Namespace, env: Mapping[str, str], conn: Connection) -> MountedDatastores:
    """The datastores mounted here; each is proven to be the datastore before anything is written."""
    mounts = parse_mounts(
        env.get("VSPHERE_REPLICATOR_MOUNTS", os.environ.get("VSPHERE_REPLICATOR_MOUNTS", ""))
    )
    for item in args.mount or []:
        mounts.update(parse_mounts(item))
    return MountedDatastores(mounts, conn=conn)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _emit(args: argparse.Namespace, value: Any, table: Callable[[], str]) -> None:
    print(json.dumps(_plain(value), sort_keys=True) if args.json else table())


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


class _Bar:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.active = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.active and total:
            filled = int(30 * done / total)
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {100 * done // total:3d}%"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.active:
            sys.stderr.write("\n")


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The cycle settings named on the command line, and only those."""
    given = {
        "keep": args.keep,
        "max_age": args.max_age,
        "quiesce": args.quiesce,
        "max_change_share": args.max_change_share,
        "verify": args.verify or None,
        "target_rpo": args.rpo,
    }
    return {k: v for k, v in given.items() if v is not None}


def _settings(args: argparse.Namespace) -> CycleSettings | None:
    chosen = _given_settings(args)
    return CycleSettings(**chosen) if chosen else None


def _disks(keys: Any) -> str:
    return ", ".join(str(k) for k in keys)


def _cycle_line(result: Any) -> str:
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
        f"({_size(result.bytes_moved)} moved for {_size(result.bytes_changed)} changed, "
        f"{result.seconds:.1f}s{notes})"
    )


def _seed_line(result: Any, adopted: str | None) -> str:
    """protect: the first restore point, made by a clone or by adopting a copy (every disk is whole)."""
    if result.confirmed:
        newest = result.restore_point
        return f"{result.vm} is already protected by {result.replica} (newest restore point {newest})"
    how = f"adopted {adopted} as the seed" if adopted else "seeded by clone"
    return (
        f"{result.vm} -> {result.replica}: restore point {result.restore_point} {how} "
        f"(disks {_disks(result.full_resync)}, {_size(result.bytes_changed)} in use, "
        f"{result.seconds:.1f}s)"
    )


def _network_pair(text: str) -> tuple[str, str]:
    source, eq, target = text.partition("=")
    if not eq or not source or not target:
        raise InvalidInput(f"--network is SOURCE_PORT_GROUP=RECOVERY_PORT_GROUP, not {text!r}")
    return source, target


def cmd_protect(args: argparse.Namespace) -> int:
    target = ReplicaTarget(
        datastore=args.datastore,
        host=args.host,
        resource_pool=args.resource_pool,
        folder=args.folder,
        provisioning=args.provisioning,
        name=args.name,
        networks=tuple(_network_pair(n) for n in args.network or []),
    )
    settings = _settings(args)
    with _session(args) as (conn, env):
        result = protect(
            conn,
            args.vm,
            target,
            settings=settings,
            adopt=args.adopt,
            replica_access=_mounts(args, env, conn),
            allow_source_datastore=args.allow_source_datastore,
        )
    _emit(args, result, lambda: _seed_line(result, args.adopt))
    return EXIT_OK


def cmd_replicate(args: argparse.Namespace) -> int:
    if args.checkpoint_every < args.chunk:
        raise InvalidInput(
            f"--checkpoint-every ({format_size(args.checkpoint_every)}) must be at least one "
            f"--chunk ({format_size(args.chunk)})"
        )
    overrides = _given_settings(args)
    apply_overrides(CycleSettings(), overrides)  # a bad value is refused before connecting
    with _session(args) as (conn, env):
        bar = _Bar(f"replicating {args.vm}")
        try:
            result = replicate(
                conn,
                args.vm,
                replica_access=_mounts(args, env, conn),
                overrides=overrides,
                checkpoint_every=args.checkpoint_every,
                chunk=args.chunk,
                on_progress=bar,
            )
        except IncrementalRefused as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            bar.close()
    _emit(args, result, lambda: _cycle_line(result))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _session(args) as (conn, _):
        found = protection_status(conn, target_rpo=args.rpo)

    def table() -> str:
        rows = [["VM", "REPLICA", "STATE", "POINTS", "LATEST", "AGE", "RPO", "OK", "NOTE"]]
        for s in found:
            note = s.last_error or ""
            if s.operation:
                note = f"{s.operation}; continue with: {s.next_step}"
            elif s.busy:
                note = f"busy: {s.busy}"
            rows.append(
                [
                    s.vm,
                    s.replica,
                    s.state,
                    str(s.restore_points),
                    s.latest_point or "-",
                    f"{s.age_seconds:.0f}s" if s.age_seconds is not None else "-",
                    f"{s.target_rpo_seconds:.0f}s" if s.target_rpo_seconds is not None else "-",
                    "n/a" if s.state == FAILED_OVER else {True: "yes", False: "NO", None: "-"}[s.compliant],
                    note,
                ]
            )
        return _table(rows) if found else "no protected VMs"

    _emit(args, found, table)
    if any(s.state == UNREADABLE for s in found):
        return EXIT_FAILED
    # A failed-over VM runs on its replica: there is no replication whose RPO could be missed.
    missed = [s for s in found if s.compliant is False and s.state != FAILED_OVER]
    return EXIT_RPO_MISSED if missed else EXIT_OK


def cmd_restore_points(args: argparse.Namespace) -> int:
    with _session(args) as (conn, _):
        points = list_restore_points(conn, args.vm)

    def table() -> str:
        rows = [["ID", "CREATED", "REPLICA SNAPSHOT", "CONSISTENCY", "MOVED", "CHANGED", "VERIFIABLE"]]
        for p in points:
            consistency = "quiesced" if p.quiesced else "crash-consistent"
            rows.append(
                [
                    p.id,
                    p.created.isoformat(timespec="seconds"),
                    p.snapshot,
                    consistency,
                    _size(p.bytes_moved),
                    _size(p.bytes_changed),
                    "yes" if p.digests else "no",
                ]
            )
        return _table(rows)

    _emit(args, points, table)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    with _session(args) as (conn, env):
        check = verify_restore_point(conn, args.vm, _mounts(args, env, conn), args.restore_point)
    disks = [
        {"replica_key": d.replica_key, "expected": d.expected, "actual": d.actual, "ok": d.ok}
        for d in check.disks
    ]

    def text() -> str:
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

    _emit(args, {"vm": check.vm, "restore_point": check.restore_point, "ok": check.ok, "disks": disks}, text)
    return EXIT_OK if check.ok else EXIT_FAILED


def cmd_snapshots(args: argparse.Namespace) -> int:
    older_than = args.older_than
    if older_than is None:
        older_than = timedelta(hours=1) if args.action == "sweep" else timedelta(0)
    with _session(args) as (conn, _):
        result = sweep_snapshots(conn, older_than=older_than, dry_run=args.dry_run or args.action == "list")

    def row(o: Any, kept: str | None) -> dict[str, Any]:
        return {
            "vm": o.vm,
            "snapshot": o.snapshot.name,
            "snapshot_moref": o.snapshot.moref,
            "created": o.snapshot.created,
            "age_seconds": o.age.total_seconds(),
            "kept": kept,
        }

    rows = [row(o, None) for o in result.removed] + [row(s.snapshot, s.reason) for s in result.spared]
    verb = {"list": "", "sweep": "would remove" if args.dry_run else "removed"}[args.action]

    def table() -> str:
        lines = []
        for r in rows:
            what = f"{r['vm']}: {r['snapshot']} ({r['age_seconds']:.0f}s old)"
            lines.append(f"kept {what}: {r['kept']}" if r["kept"] else f"{verb} {what}".strip())
        if not older_than:
            return "\n".join(lines) or "no snapshots of ours"
        return "\n".join(lines) or f"no snapshots of ours older than {format_duration(older_than)}"

    _emit(args, rows, table)
    return EXIT_OK


def _stop_once(stop: threading.Event) -> Callable[[int, Any], None]:
    """A handler that asks `stop` once and ignores further signals.

    `timeout` and a double Ctrl-C deliver the signal twice; a second
    `Event.set()` running inside the first (handlers run between bytecodes
    of the main thread) would wait forever on the event's lock.
    """

    def handler(signum: int, frame: Any) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        stop.set()

    return handler


def cmd_run(args: argparse.Namespace) -> int:
    try:
        policy_file = load_policy_file(args.policy_file)
    except PolicyFileError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_once(stop))

    def show(record: Any) -> None:
        if args.json:
            print(json.dumps(_plain(record), sort_keys=True), flush=True)
        else:
            outcome = record.summary if record.ok else f"FAILED {record.error}"
            print(f"{record.finished:%H:%M:%S} {record.vm} [{record.protection}/{record.policy}] {outcome}")

    with _session(args) as (conn, env):
        engine = LiveEngine(conn, replica_access=_mounts(args, env, conn))
        records = run_policies(
            policy_file, engine, once=not args.watch, stop=stop, max_cycles=args.max_cycles, on_record=show
        )
    if not records and not stop.is_set():
        print(f"nothing ran: no VM matches the selections of {args.policy_file}", file=sys.stderr)
    return EXIT_OK if all(r.ok for r in records) else EXIT_FAILED


def _nics(result: Any) -> str:
    if result.resumed:
        return ""  # the NICs were moved (or not) by the run that was interrupted
    if not result.nics:
        return ", NICs left on their networks (none was on a port group the target maps)"
    return "".join(f", {n.label} {n.old} -> {n.new}" for n in result.nics)


def _failover_line(result: Any, vm: str | None = None, what: str | None = None) -> str:
    name = vm or result.vm
    if result.already_done and result.kind == "failback":
        newest = result.restore_point
        return f"{name}: nothing to fail back: {result.running} runs, protected (newest point {newest})"
    if result.already_done:
        return f"{name}: already failed over; {result.running} runs at {result.restore_point}"
    final = ""
    if result.final_cycle is not None:
        final = f" (final sync moved {_size(result.final_cycle.bytes_moved)})"
    again = " (continued an interrupted run)" if result.resumed else ""
    return (
        f"{name}: {what or result.kind + ' failover'}, {result.running} running at "
        f"{result.restore_point}{final}{again}{_nics(result)}"
    )


def cmd_failover(args: argparse.Namespace) -> int:
    from vsphere_replicator.replication import failover

    if not (args.test or args.planned or args.unplanned or args.cleanup):
        raise InvalidInput(
            "say which failover: --test (an isolated copy), --planned (sync, source off, replica on), "
            "--unplanned (the replica at a restore point, the source left as it is) or --cleanup"
        )
    if args.force and not args.unplanned:
        raise InvalidInput("--force only applies to --unplanned")
    if args.restore_point and args.planned:
        raise InvalidInput("a planned failover always brings up the newest data: drop --restore-point")
    if args.restore_point and args.cleanup:
        raise InvalidInput("--cleanup removes every test copy: drop --restore-point")
    with _session(args) as (conn, env):
        if args.cleanup:
            removed = failover.cleanup_test_failover(conn, args.vm)
            _emit(args, {"removed": removed}, lambda: f"removed {', '.join(removed) or 'nothing'}")
            return EXIT_OK
        if args.test:
            result = failover.start_test_failover(conn, args.vm, restore_point=args.restore_point)
        elif args.planned:
            result = failover.planned_failover(conn, args.vm, replica_access=_mounts(args, env, conn))
        else:
            result = failover.unplanned_failover(
                conn, args.vm, restore_point=args.restore_point, force=args.force
            )
    _emit(args, result, lambda: _failover_line(result))
    return EXIT_OK


def cmd_failback(args: argparse.Namespace) -> int:
    from vsphere_replicator.replication.failback import failback
    from vsphere_replicator.replication.replica import replica_of

    with _session(args) as (conn, env):
        try:
            running = replica_of(conn, args.vm, promoted=True).vm.name
        except NotFound:
            running = "its replica"
        result = failback(conn, args.vm, replica_access=_mounts(args, env, conn), switch=not args.no_switch)
    if result is None:
        _emit(
            args,
            {"vm": args.vm, "reversed": True, "source": running, "replica": args.vm},
            lambda: (
                f"{args.vm}: replication reversed ({running} -> {args.vm}), not switched; "
                f"finish with: vsphere-replicator failback {args.vm}"
            ),
        )
    else:
        _emit(args, result, lambda: _failover_line(result, args.vm, f"failed back from {running}"))
    return EXIT_OK


def cmd_disks(args: argparse.Namespace) -> int:
    from vsphere_replicator.replication.leftovers import find_leftover_disks, remove_leftover_disks

    with _session(args) as (conn, _):
        if args.action == "sweep":
            found = remove_leftover_disks(conn, dry_run=args.dry_run)
        else:
            found = find_leftover_disks(conn)

    def table() -> str:
        lines = []
        for d in found:
            if d.kept:
                lines.append(f"kept {d.replica}: {d.file}: {d.kept}")
            else:
                verb = (
                    "removed" if d.removed else "would remove" if args.action == "sweep" else "unreferenced"
                )
                lines.append(f"{verb} {d.replica}: {d.file}")
        return "\n".join(lines) or "no disk in a replica's folders is unreferenced"

    _emit(args, found, table)
    return EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    from vsphere_replicator.replication.protection import update_settings

    given = _given_settings(args)
    for on, off in (
        ("max_age", "no_max_age"),
        ("rpo", "no_rpo"),
        ("max_change_share", "no_max_change_share"),
        ("verify", "no_verify"),
    ):
        if getattr(args, on) and getattr(args, off):
            flag = on.replace("_", "-")
            raise InvalidInput(f"--{flag} and --no-{flag} contradict each other: give one")
    if args.no_max_age:
        given["max_age"] = None
    if args.no_rpo:
        given["target_rpo"] = None
    if args.no_max_change_share:
        given["max_change_share"] = None
    if args.no_verify:
        given["verify"] = False
    with _session(args) as (conn, _):
        change = update_settings(conn, args.vm, **given)

    def shown(value: Any) -> str:
        if value is None:
            return "-"
        return format_duration(value) if isinstance(value, timedelta) else str(value)

    def table() -> str:
        rows = [["SETTING", "BEFORE", "AFTER", ""]]
        for name in CycleSettings.__dataclass_fields__:
            before, after = getattr(change.before, name), getattr(change.after, name)
            rows.append([name, shown(before), shown(after), "changed" if name in change.changed else ""])
        return f"{change.vm} ({change.replica}):\n" + _table(rows)

    _emit(args, change, table)
    return EXIT_OK


def cmd_unprotect(args: argparse.Namespace) -> int:
    from vsphere_replicator.replication.protection import unprotect

    with _session(args) as (conn, _):
        result = unprotect(conn, args.vm, delete_replica=args.delete_replica)

    def line() -> str:
        if result.deleted:
            return f"{result.vm}: protection ended, replica {result.replica} deleted"
        if result.failed_over:
            return f"{result.vm}: protection ended; {result.replica} runs on as its production VM"
        return (
            f"{result.vm}: protection ended, {result.replica} kept as a plain VM at its newest restore "
            f"point ({result.snapshots_removed} restore-point snapshots consolidated)"
        )

    _emit(args, result, line)
    return EXIT_OK


def add_commands(commands: Any) -> None:
    """Register the replication commands on the main parser's sub-command set."""

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, help=help)
        p.set_defaults(func=func)
        p.add_argument("--profile", default=None, help="read VSPHERE_<PROFILE>_* instead of VSPHERE_*")
        p.add_argument("--json", action="store_true", help="print JSON for machines")
        return p

    def cycle_options(p: argparse.ArgumentParser, *, mount: bool = True) -> None:
        p.add_argument(
            "--keep",
            type=int_option(1, MAX_KEEP),
            default=None,
            help=f"restore points to keep (1-{MAX_KEEP})",
        )
        p.add_argument(
            "--max-age", type=parse_duration, default=None, help="drop restore points older than this"
        )
        p.add_argument("--quiesce", choices=["never", "try", "require"], default=None)
        p.add_argument(
            "--max-change-share", type=fraction_option, default=None, help="refuse larger incrementals (0-1)"
        )
        p.add_argument("--verify", action="store_true", help="compare and digest every restore point")
        p.add_argument("--rpo", type=parse_duration, default=None, help="target RPO for status")
        if mount:
            p.add_argument("--mount", action="append", help="DATASTORE=DIR where a datastore is mounted here")

    p = command("protect", cmd_protect, "seed a VM's replica on the secondary datastore")
    p.add_argument("vm")
    p.add_argument("--datastore", required=True)
    p.add_argument("--host", default=None)
    p.add_argument("--resource-pool", default=None)
    p.add_argument("--folder", default=None)
    p.add_argument("--provisioning", choices=["thin", "thick-lazy", "thick-eager"], default="thin")
    p.add_argument("--name", default="{vm}-replica", help="replica name template ({vm})")
    p.add_argument("--adopt", default=None, metavar="VM", help="adopt this existing copy as the seed")
    p.add_argument(
        "--allow-source-datastore",
        action="store_true",
        help="allow the replica on a datastore the source uses (it would not survive losing it)",
    )
    p.add_argument(
        "--network",
        action="append",
        metavar="SOURCE=RECOVERY",
        help="on failover, move NICs from this port group to that one (repeatable)",
    )
    cycle_options(p)

    p = command("replicate", cmd_replicate, "run one replication cycle (resuming an interrupted one)")
    p.add_argument("vm")
    p.add_argument(
        "--checkpoint-every",
        type=size_option(CHUNK_UNIT, MAX_CHECKPOINT),
        default=256 << 20,
        metavar="SIZE",
        help="journal checkpoint after this many bytes (at least one chunk)",
    )
    p.add_argument(
        "--chunk",
        type=size_option(CHUNK_UNIT, MAX_CHUNK, CHUNK_UNIT),
        default=4 << 20,
        metavar="SIZE",
        help="bytes per read: 64K to 64M, in steps of 64K",
    )
    cycle_options(p)

    p = command("run", cmd_run, "run a policy file: every selected VM once, or on schedule with --watch")
    p.add_argument("policy_file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one cycle per selected VM, then exit (default)")
    mode.add_argument("--watch", action="store_true", help="keep running each VM when its policy is due")
    p.add_argument(
        "--max-cycles",
        type=int_option(1, MAX_CYCLES),
        default=None,
        help="stop watching after this many cycles",
    )
    p.add_argument("--mount", action="append", help="DATASTORE=DIR where a datastore is mounted here")

    p = command(
        "failover",
        cmd_failover,
        "bring a replica up: --test copy, --planned, --unplanned; --cleanup test copies",
    )
    p.add_argument("vm", help="the protected (source) VM's name")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--test", action="store_true", help="run an isolated copy; touch nothing else")
    kind.add_argument("--planned", action="store_true", help="final sync, source off, replica on")
    kind.add_argument(
        "--unplanned", action="store_true", help="replica on at a restore point; the source is not touched"
    )
    kind.add_argument("--cleanup", action="store_true", help="remove the copies of earlier --test runs")
    p.add_argument("--restore-point", default=None, help="default: the latest")
    p.add_argument(
        "--force", action="store_true", help="--unplanned even though the source still runs (two copies up)"
    )
    p.add_argument("--mount", action="append", help="DATASTORE=DIR where a datastore is mounted here")

    p = command("failback", cmd_failback, "reverse replication into the original VM, then switch back to it")
    p.add_argument("vm", help="the original VM's name")
    p.add_argument("--no-switch", action="store_true", help="only reverse the replication")
    p.add_argument("--mount", action="append", help="DATASTORE=DIR where a datastore is mounted here")

    p = command("status", cmd_status, "latest restore point and RPO compliance of every protected VM")
    p.add_argument("--rpo", type=parse_duration, default=None, help="target RPO to judge against")

    p = command("restore-points", cmd_restore_points, "list a protected VM's restore points")
    p.add_argument("vm")

    p = command("verify", cmd_verify, "re-check a restore point against its recorded digests")
    p.add_argument("vm")
    p.add_argument("--restore-point", default=None, help="default: the latest")
    p.add_argument("--mount", action="append", help="DATASTORE=DIR where a datastore is mounted here")

    p = command("snapshots", cmd_snapshots, "list or sweep snapshots our runs left behind")
    p.add_argument("action", choices=["list", "sweep"])
    p.add_argument(
        "--older-than",
        type=age_option,
        default=None,
        help="only snapshots at least this old (default: all for list, 1h for sweep)",
    )
    p.add_argument("--dry-run", action="store_true")

    p = command("disks", cmd_disks, "list or sweep disk files in replica folders that nothing references")
    p.add_argument("action", choices=["list", "sweep"])
    p.add_argument("--dry-run", action="store_true")

    p = command("settings", cmd_settings, "show or change the settings protect recorded for a VM")
    p.add_argument("vm")
    cycle_options(p, mount=False)
    p.add_argument("--no-max-age", action="store_true", help="keep restore points whatever their age")
    p.add_argument("--no-rpo", action="store_true", help="drop the target RPO")
    p.add_argument("--no-max-change-share", action="store_true", help="never refuse an incremental")
    p.add_argument("--no-verify", action="store_true", help="stop verifying restore points")

    p = command("unprotect", cmd_unprotect, "end a VM's protection, keeping its replica or deleting it")
    p.add_argument("vm", help="the protected (source) VM's name")
    p.add_argument("--delete-replica", action="store_true", help="delete the replica VM (default: keep it)")
