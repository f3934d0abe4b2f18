"""The replication commands: protect, replicate, run, failover, failback, status, restore-points, ...

Each is thin: it checks its options, connects (profiles.py), calls one
function of `vsphere_replicator.replication`, and prints the result
(output.py) as text or, with --json, as one JSON document. Long transfers
show a progress bar on a terminal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from types import FrameType

from vsphere_replicator.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_RPO_MISSED, UsageError
from vsphere_replicator.cli.options import (
    Command,
    Commands,
    add_connection_options,
    add_cycle_options,
    add_mount_option,
    age_option,
    datetime_option,
    duration_option,
    given_settings,
    int_option,
    network_pair,
    size_option,
)
from vsphere_replicator.cli.output import (
    cycle_line,
    disks_text,
    duration_text,
    emit,
    failover_line,
    is_stuck,
    misses_rpo,
    plan_lines,
    plan_replication_lines,
    progress,
    restore_points_table,
    reversed_line,
    run_record_line,
    seed_line,
    settings_table,
    snapshot_rows,
    snapshots_text,
    status_table,
    unprotect_line,
    verify_document,
    verify_line,
)
from vsphere_replicator.cli.profiles import session, site_profiles, site_sessions, target_session
from vsphere_replicator.customize import NicAddress, RecoveryIp
from vsphere_replicator.errors import ConnectionFailed, NotFound
from vsphere_replicator.inventory import PROVISIONING
from vsphere_replicator.policies import LiveEngine, RunRecord, load_policy_file, run_policies
from vsphere_replicator.policies.fleet import SCHEDULER_VARIABLE, dask_executor
from vsphere_replicator.replication import CycleSettings, ReplicaTarget, failover, plans, protect, replicate
from vsphere_replicator.replication.cycle import DEFAULT_CHECKPOINT
from vsphere_replicator.replication.failback import failback
from vsphere_replicator.replication.leftovers import find_leftover_disks, remove_leftover_disks
from vsphere_replicator.replication.protection import unprotect, update_settings
from vsphere_replicator.replication.replica import replica_of
from vsphere_replicator.replication.restore_points import list_restore_points, verify_restore_point
from vsphere_replicator.replication.settings import (
    CHUNK_UNIT,
    MAX_CHECKPOINT,
    MAX_CHUNK,
    PlanMembership,
    apply_overrides,
)
from vsphere_replicator.replication.status import StatusList, protection_status
from vsphere_replicator.replication.sweep import sweep_snapshots
from vsphere_replicator.transport.base import DEFAULT_CHUNK
from vsphere_replicator.units import format_size

MAX_CYCLES = 1_000_000
SWEEP_AGE = timedelta(hours=1)  # `snapshots sweep` leaves younger snapshots alone unless told otherwise


def _progress_shown(args: argparse.Namespace) -> bool:
    """A bar only for a person watching: never with --json, never when stderr is not a terminal."""
    return not args.json and sys.stderr.isatty()


def _recovery_ip(args: argparse.Namespace) -> RecoveryIp | None:
    """--recovery-ip (per NIC) and --recovery-dns as the replica's addresses on the recovery site."""
    if not args.recovery_ip:
        if args.recovery_dns:
            raise UsageError("--recovery-dns goes with --recovery-ip")
        return None
    dns = tuple(d.strip() for d in (args.recovery_dns or "").split(",") if d.strip())
    return RecoveryIp(nics=tuple(NicAddress.parse(text) for text in args.recovery_ip), dns=dns)


def _plan_membership(args: argparse.Namespace) -> PlanMembership | None:
    if args.plan is None:
        if args.tier != 1 or args.consistency_group or args.plan_wait is not None:
            raise UsageError("--tier, --consistency-group and --plan-wait go with --plan")
        return None
    wait = args.plan_wait
    return PlanMembership(
        name=args.plan,
        tier=args.tier,
        consistency_group=args.consistency_group,
        wait="tools" if wait is None else "delay",
        delay_seconds=0.0 if wait is None else wait.total_seconds(),
    )


def cmd_protect(args: argparse.Namespace) -> int:
    target = ReplicaTarget(
        datastore=args.datastore,
        host=args.host,
        resource_pool=args.resource_pool,
        folder=args.folder,
        provisioning=args.provisioning,
        name=args.name,
        networks=tuple(network_pair(n) for n in args.network or []),
        recovery_ip=_recovery_ip(args),
        plan=_plan_membership(args),
    )
    chosen = given_settings(args)
    settings = CycleSettings(**chosen) if chosen else None
    with (
        site_sessions(args) as s,
        progress(f"seeding {args.vm}", enabled=_progress_shown(args)) as bar,
    ):
        replica_access, source_access = s.disks(args)
        result = protect(
            s.sites,
            args.vm,
            target,
            settings=settings,
            adopt=args.adopt,
            replica_access=replica_access,
            source_access=source_access,
            allow_source_datastore=args.allow_source_datastore,
            on_progress=bar.percent,
        )
    emit(args.json, result, lambda: seed_line(result, args.adopt, copied=not s.single))
    return EXIT_OK


def cmd_replicate(args: argparse.Namespace) -> int:
    if args.checkpoint_every < args.chunk:
        raise UsageError(
            f"--checkpoint-every ({format_size(args.checkpoint_every)}) must be at least one "
            f"--chunk ({format_size(args.chunk)})"
        )
    overrides = given_settings(args)
    apply_overrides(CycleSettings(), overrides)  # a bad value is refused before connecting
    if (args.vm is None) == (args.plan is None):
        raise UsageError("name a VM, or a recovery plan with --plan (its VMs replicate together)")
    if args.plan is not None:
        if overrides:
            raise UsageError("--plan runs each VM with its recorded settings: drop the cycle options")
        with site_sessions(args) as s:
            replica_access, source_access = s.disks(args)
            made = plans.replicate_plan(
                s.sites,
                args.plan,
                replica_access=replica_access,
                source_access=source_access,
                verify_access=s.verify_access(args, source_access),
            )
        emit(args.json, made, lambda: plan_replication_lines(made))
        return EXIT_OK if not made.failed else EXIT_FAILED
    with site_sessions(args) as s, progress(f"replicating {args.vm}", enabled=_progress_shown(args)) as bar:
        replica_access, source_access = s.disks(args)
        result = replicate(
            s.sites,
            args.vm,
            replica_access=replica_access,
            source_access=source_access,
            verify_access=s.verify_access(args, source_access),
            overrides=overrides,
            checkpoint_every=args.checkpoint_every,
            chunk=args.chunk,
            on_progress=bar,
        )
    emit(args.json, result, lambda: cycle_line(result))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    source_profile, target_profile = site_profiles(args)
    with target_session(args) as s:
        if source_profile == target_profile:
            found = protection_status(s.conn, target_rpo=args.rpo)
        else:  # two sites: the sources' states if their vCenter answers; "unknown" is no error
            try:
                with session(source_profile) as src:
                    found = protection_status(s.conn, target_rpo=args.rpo, source=src.conn)
            except ConnectionFailed as exc:
                print(f"warning: the source site cannot be reached ({exc}): its VMs' states are unknown",
                      file=sys.stderr)  # fmt: skip
                found = protection_status(s.conn, target_rpo=args.rpo, source_unreachable=True)
    if args.vm:
        found = StatusList(f for f in found if f.vm in args.vm)
        missing = sorted(set(args.vm) - {f.vm for f in found})
        if missing:
            raise NotFound(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not protected")
    emit(args.json, found, lambda: status_table(found))
    if any(is_stuck(s) for s in found):
        return EXIT_FAILED
    return EXIT_RPO_MISSED if any(misses_rpo(s) for s in found) else EXIT_OK


def cmd_restore_points(args: argparse.Namespace) -> int:
    with target_session(args) as s:
        points = list_restore_points(s.conn, args.vm)
    emit(args.json, points, lambda: restore_points_table(points))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    with target_session(args) as s, progress(f"verifying {args.vm}", enabled=_progress_shown(args)) as bar:
        check = verify_restore_point(s.conn, args.vm, s.disks(args)[0], args.restore_point, on_progress=bar)
    emit(args.json, verify_document(check), lambda: verify_line(check))
    return EXIT_OK if check.ok else EXIT_FAILED


def cmd_snapshots(args: argparse.Namespace) -> int:
    older_than = args.older_than
    if older_than is None:
        older_than = SWEEP_AGE if args.action == "sweep" else timedelta(0)
    with session(args.profile) as s:
        result = sweep_snapshots(s.conn, older_than=older_than, dry_run=args.dry_run or args.action == "list")
    rows = snapshot_rows(result)
    verb = {"list": "", "sweep": "would remove" if args.dry_run else "removed"}[args.action]
    emit(args.json, rows, lambda: snapshots_text(rows, verb, older_than))
    return EXIT_OK


def _stop_once(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    """A handler that asks `stop` once and ignores further signals.

    `timeout` and a double Ctrl-C deliver the signal twice; a second
    `Event.set()` running inside the first (handlers run between bytecodes
    of the main thread) would wait forever on the event's lock.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        stop.set()

    return handler


def cmd_run(args: argparse.Namespace) -> int:
    policy_file = load_policy_file(args.policy_file)  # PolicyFileError: every problem, file:line:column
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_once(stop))

    def show(record: RunRecord) -> None:
        emit(args.json, record, lambda: run_record_line(record))
        sys.stdout.flush()

    scheduler = args.scheduler or os.environ.get(SCHEDULER_VARIABLE)
    with session(args.profile) as s, ExitStack() as stack:
        replica_access, source_access = s.disks(args)
        engine = LiveEngine(s.conn, replica_access=replica_access, source_access=source_access)
        # On a dask cluster each worker runs the cycles with its own session for the same profile.
        executor = stack.enter_context(dask_executor(scheduler)) if scheduler else None
        records = run_policies(
            policy_file,
            engine,
            once=not args.watch,
            stop=stop,
            max_cycles=args.max_cycles,
            on_record=show,
            executor=executor,
            profile=args.profile,
            transport=s.transport(args),
        )
    if not records and not stop.is_set():
        print(f"nothing ran: no VM matches the selections of {args.policy_file}", file=sys.stderr)
    return EXIT_OK if all(r.ok for r in records) else EXIT_FAILED


def cmd_failover(args: argparse.Namespace) -> int:
    if not (args.test or args.planned or args.unplanned or args.cleanup):
        raise UsageError(
            "say which failover: --test (an isolated copy), --planned (sync, source off, replica on), "
            "--unplanned (the replica at a restore point, the source left as it is) or --cleanup"
        )
    if args.force and not args.unplanned:
        raise UsageError("--force only applies to --unplanned")
    if args.restore_point and args.planned:
        raise UsageError("a planned failover always brings up the newest data: drop --restore-point")
    if args.restore_point and args.cleanup:
        raise UsageError("--cleanup removes every test copy: drop --restore-point")
    if (args.vm is None) == (args.plan is None):
        raise UsageError("name a VM, or a recovery plan with --plan")
    if args.test_network and not args.test:
        raise UsageError("--test-network applies to --test only")
    if args.at is not None and args.plan is None:
        raise UsageError("--at picks a plan's restore points by time: use --restore-point for one VM")
    if args.plan is not None:
        return _failover_plan(args)
    tests = dict(network_pair(n) for n in args.test_network or [])
    if args.planned:
        with site_sessions(args) as both:
            replica_access, source_access = both.disks(args)
            with progress(f"syncing {args.vm}", enabled=_progress_shown(args)) as bar:
                result = failover.planned_failover(
                    both.sites,
                    args.vm,
                    replica_access=replica_access,
                    source_access=source_access,
                    on_progress=bar,
                )
        emit(args.json, result, lambda: failover_line(result))
        return EXIT_OK
    with target_session(args) as s:  # the recovery site alone: the source's may be lost
        if args.cleanup:
            removed = failover.cleanup_test_failover(s.conn, args.vm)
            emit(args.json, {"removed": removed}, lambda: f"removed {', '.join(removed) or 'nothing'}")
            return EXIT_OK
        if args.test:
            result = failover.start_test_failover(
                s.conn, args.vm, restore_point=args.restore_point, test_networks=tests
            )
        else:
            result = failover.unplanned_failover(
                s.conn, args.vm, restore_point=args.restore_point, force=args.force
            )
    emit(args.json, result, lambda: failover_line(result))
    return EXIT_OK


def _failover_plan(args: argparse.Namespace) -> int:
    if args.restore_point:
        raise UsageError("a plan's restore points are one group's: pick them with --at TIME")
    tests = dict(network_pair(n) for n in args.test_network or [])
    if args.cleanup:
        with target_session(args) as s:
            removed = plans.cleanup_plan_test(s.conn, args.plan)
        emit(args.json, {"removed": removed}, lambda: f"removed {', '.join(removed) or 'nothing'}")
        return EXIT_OK
    kind: plans.PlanKind = "test" if args.test else "planned" if args.planned else "unplanned"
    if kind == "planned":
        with site_sessions(args) as both:
            replica_access, source_access = both.disks(args)
            result = plans.failover_plan(
                both.sites,
                args.plan,
                kind="planned",
                replica_access=replica_access,
                source_access=source_access,
            )
    else:
        with target_session(args) as s:
            result = plans.failover_plan(
                s.conn, args.plan, kind=kind, at=args.at, test_networks=tests, force=args.force
            )
    emit(args.json, result, lambda: plan_lines(result))
    return EXIT_OK


def cmd_failback(args: argparse.Namespace) -> int:
    """One VM, or a recovery plan's VMs tier by tier, back on their originals (one or two vCenters)."""
    if (args.vm is None) == (args.plan is None):
        raise UsageError("name a VM, or a recovery plan with --plan (its VMs come back tier by tier)")
    if args.plan is not None and args.no_switch:
        raise UsageError("--no-switch is for one VM: a plan's VMs come back whole")
    source, target = site_profiles(args)
    if source == target and args.datastore is not None:
        raise UsageError("--datastore is for failing back into a fresh source site (two vCenters)")
    with site_sessions(args) as both:
        replica_access, source_access = both.failback_disks(args)
        if args.plan is not None:
            made = plans.failback_plan(
                both.sites,
                args.plan,
                replica_access=replica_access,
                source_access=source_access,
                datastore=args.datastore,
            )
            emit(args.json, made, lambda: plan_lines(made))
            return EXIT_OK
        try:
            running = replica_of(both.target.conn, args.vm, promoted=True).vm.name
        except NotFound:
            running = "its replica"
        with progress(f"failing back {args.vm}", enabled=_progress_shown(args)) as bar:
            result = failback(
                both.sites,
                args.vm,
                replica_access=replica_access,
                source_access=source_access,
                datastore=args.datastore,
                switch=not args.no_switch,
                on_progress=bar,
            )
    if result is None:
        reversed_ = {"vm": args.vm, "reversed": True, "source": running, "replica": args.vm}
        emit(args.json, reversed_, lambda: reversed_line(args.vm, running))
    else:
        emit(args.json, result, lambda: failover_line(result, args.vm, f"failed back from {running}"))
    return EXIT_OK


def cmd_disks(args: argparse.Namespace) -> int:
    with session(args.profile) as s:
        if args.action == "sweep":
            found = remove_leftover_disks(s.conn, dry_run=args.dry_run)
        else:
            found = find_leftover_disks(s.conn)
    emit(args.json, found, lambda: disks_text(found, sweep=args.action == "sweep"))
    return EXIT_OK


# `settings --no-X` drops setting X; (option dest, CycleSettings field, the value that means "none").
_UNSET = (
    ("max_age", "max_age", None),
    ("rpo", "target_rpo", None),
    ("max_change_share", "max_change_share", None),
    ("verify", "verify", False),
)


def cmd_settings(args: argparse.Namespace) -> int:
    given = given_settings(args)
    for option, field, none in _UNSET:
        if getattr(args, option) and getattr(args, f"no_{option}"):
            flag = option.replace("_", "-")
            raise UsageError(f"--{flag} and --no-{flag} contradict each other: give one")
        if getattr(args, f"no_{option}"):
            given[field] = none
    with target_session(args) as s:
        change = update_settings(s.conn, args.vm, **given)
    emit(args.json, change, lambda: settings_table(change))
    return EXIT_OK


def cmd_unprotect(args: argparse.Namespace) -> int:
    with target_session(args) as s:
        result = unprotect(s.conn, args.vm, delete_replica=args.delete_replica)
    emit(args.json, result, lambda: unprotect_line(result))
    return EXIT_OK


def add_commands(commands: Commands) -> None:
    """Register the replication commands on the main parser's sub-command set."""

    def command(
        name: str,
        func: Command,
        help: str,
        *,
        mount: bool = False,
        more: str = "",
    ) -> argparse.ArgumentParser:
        description = f"{help}. {more}" if more else help
        p = commands.add_parser(name, help=help, description=description)
        p.set_defaults(func=func)
        add_connection_options(p)
        if mount:
            add_mount_option(p)
        return p

    p = command("protect", cmd_protect, "seed a VM's replica on the secondary datastore", mount=True)
    p.add_argument("vm", help="the VM to protect")
    p.add_argument("--datastore", required=True, help="the replica's datastore")
    p.add_argument("--host", default=None, help="the replica's host (default: vCenter's choice)")
    p.add_argument("--resource-pool", default=None, help="the replica's resource pool")
    p.add_argument("--folder", default=None, help="the replica's folder, such as DC0/vm/replicas")
    p.add_argument("--provisioning", choices=PROVISIONING, default="thin", help="the replica's disks")
    p.add_argument("--name", default="{vm}-replica", help="replica name template ({vm} is the VM's name)")
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
    p.add_argument(
        "--recovery-ip",
        action="append",
        metavar="ADDRESS/PREFIX[,gateway=GW]|dhcp",
        help="the replica's address on the recovery site, per NIC in order (repeatable; guest customization)",
    )
    p.add_argument("--recovery-dns", default=None, metavar="IP[,IP]", help="DNS servers with --recovery-ip")
    p.add_argument("--plan", default=None, metavar="NAME", help="the recovery plan this VM fails over with")
    p.add_argument(
        "--tier", type=int_option(1, 100), default=1, metavar="N", help="its tier in --plan (1 first)"
    )
    p.add_argument(
        "--consistency-group",
        action="store_true",
        help="--plan's VMs replicate together, their snapshots in one window (replicate --plan)",
    )
    p.add_argument(
        "--plan-wait",
        type=duration_option,
        default=None,
        metavar="DURATION",
        help="between --plan's tiers wait this long (default: until the tier's VMware Tools run)",
    )
    add_cycle_options(p)

    p = command(
        "replicate",
        cmd_replicate,
        "run one replication cycle (resuming an interrupted one)",
        mount=True,
        more="Cycle settings given here hold for this run only; `settings` changes the recorded ones.",
    )
    p.add_argument("vm", nargs="?", default=None, help="the protected (source) VM")
    p.add_argument(
        "--plan", default=None, metavar="NAME", help="replicate every VM of this recovery plan together"
    )
    p.add_argument(
        "--chunk",
        type=size_option(CHUNK_UNIT, MAX_CHUNK, CHUNK_UNIT),
        default=format_size(DEFAULT_CHUNK),
        metavar="SIZE",
        help=f"bytes per read: {format_size(CHUNK_UNIT)} to {format_size(MAX_CHUNK)}, "
        f"in steps of {format_size(CHUNK_UNIT)}",
    )
    p.add_argument(
        "--checkpoint-every",
        type=size_option(CHUNK_UNIT, MAX_CHECKPOINT),
        default=format_size(DEFAULT_CHECKPOINT),
        metavar="SIZE",
        help="record progress in the journal after this many bytes (at least one --chunk); "
        "an interrupted cycle resumes from the last checkpoint",
    )
    add_cycle_options(p, when_absent="as recorded")

    p = command(
        "run",
        cmd_run,
        "run a policy file: every selected VM once, or on schedule with --watch",
        mount=True,
    )
    p.add_argument("policy_file", help="the YAML policy file (docs/user-guide.md, section 10)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one cycle per selected VM, then exit (default)")
    mode.add_argument("--watch", action="store_true", help="keep running each VM when its policy is due")
    p.add_argument(
        "--max-cycles",
        type=int_option(1, MAX_CYCLES),
        default=None,
        metavar="N",
        help="stop watching after this many cycles",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help=f"run the cycles on the workers of this dask scheduler (default: ${SCHEDULER_VARIABLE})",
    )

    p = command(
        "failover",
        cmd_failover,
        "bring a replica up: --test copy, --planned, --unplanned; --cleanup test copies",
        mount=True,
    )
    p.add_argument("vm", nargs="?", default=None, help="the protected (source) VM's name")
    p.add_argument("--plan", default=None, metavar="NAME", help="a recovery plan's VMs, tier by tier")
    p.add_argument(
        "--at",
        type=datetime_option,
        default=None,
        metavar="TIME",
        help="with --plan: the newest consistency group at or before this ISO time (default: the newest)",
    )
    p.add_argument(
        "--test-network",
        action="append",
        metavar="SOURCE=TEST",
        help="with --test: put NICs of this port group on that test network; others are disconnected",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--test", action="store_true", help="run an isolated copy; touch nothing else")
    kind.add_argument("--planned", action="store_true", help="final sync, source off, replica on")
    kind.add_argument(
        "--unplanned", action="store_true", help="replica on at a restore point; the source is not touched"
    )
    kind.add_argument("--cleanup", action="store_true", help="remove the copies of earlier --test runs")
    p.add_argument("--restore-point", default=None, metavar="ID", help="default: the latest")
    p.add_argument(
        "--force", action="store_true", help="--unplanned even though the source still runs (two copies up)"
    )

    p = command(
        "failback",
        cmd_failback,
        "reverse replication into the original VM, then switch back to it",
        mount=True,
    )
    p.add_argument("vm", nargs="?", default=None, help="the original VM's name")
    p.add_argument(
        "--plan", default=None, metavar="NAME", help="every VM of this recovery plan, tier by tier"
    )
    p.add_argument("--no-switch", action="store_true", help="only reverse the replication")
    p.add_argument(
        "--datastore",
        default=None,
        metavar="NAME",
        help="two vCenters: where the source site makes the original anew when it no longer has it",
    )

    p = command(
        "status",
        cmd_status,
        "latest restore point and RPO compliance of every protected VM (or of those named)",
    )
    p.add_argument("vm", nargs="*", help="only these protected VMs (default: all)")
    p.add_argument(
        "--rpo", type=duration_option, default=None, metavar="DURATION", help="target RPO to judge against"
    )

    p = command("restore-points", cmd_restore_points, "list a protected VM's restore points")
    p.add_argument("vm", help="the protected (source) VM")

    p = command("verify", cmd_verify, "re-check a restore point against its recorded digests", mount=True)
    p.add_argument("vm", help="the protected (source) VM")
    p.add_argument("--restore-point", default=None, metavar="ID", help="default: the latest")

    p = command("snapshots", cmd_snapshots, "list or sweep snapshots our runs left behind")
    p.add_argument("action", choices=["list", "sweep"])
    p.add_argument(
        "--older-than",
        type=age_option,
        default=None,
        metavar="DURATION",
        help="only snapshots at least this old "
        f"(default: all for list, {duration_text(SWEEP_AGE)} for sweep)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what sweep would remove; remove nothing")

    p = command("disks", cmd_disks, "list or sweep disk files in replica folders that nothing references")
    p.add_argument("action", choices=["list", "sweep"])
    p.add_argument("--dry-run", action="store_true", help="say what sweep would delete; delete nothing")

    p = command("settings", cmd_settings, "show or change the settings protect recorded for a VM")
    p.add_argument("vm", help="the protected (source) VM")
    add_cycle_options(p, when_absent="unchanged")
    p.add_argument("--no-max-age", action="store_true", help="keep restore points whatever their age")
    p.add_argument("--no-rpo", action="store_true", help="drop the target RPO")
    p.add_argument("--no-max-change-share", action="store_true", help="never refuse an incremental")
    p.add_argument("--no-verify", action="store_true", help="stop verifying restore points")

    p = command("unprotect", cmd_unprotect, "end a VM's protection, keeping its replica or deleting it")
    p.add_argument("vm", help="the protected (source) VM's name")
    p.add_argument("--delete-replica", action="store_true", help="delete the replica VM (default: keep it)")
