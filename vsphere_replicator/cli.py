"""Command-line front end: `vsphere-replicator`.

Whatever it is given, it ends with an exit code from EXIT_CODES and, on
failure, one `error: …` line on stderr — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vsphere_replicator.cli_replication import (
    EXIT_BUSY,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_commands,
    int_option,
    size_option,
)
from vsphere_replicator.demo import run_demo
from vsphere_replicator.errors import InvalidInput, ReplicatorError
from vsphere_replicator.lab import LabControl, LabInfo, lab_status, start_lab, stop_lab
from vsphere_replicator.lab.control import MAX_DELAY_MS, MAX_FAULT_COUNT, MAX_WRITE
from vsphere_replicator.lab.process import (
    MAX_DISK_SIZE,
    MAX_DISKS_PER_VM,
    MAX_HOSTS,
    MAX_LATENCY_MS,
    MAX_VMS,
    MIN_DISK_SIZE,
)
from vsphere_replicator.logs import configure_logging
from vsphere_replicator.replication.lease import Busy
from vsphere_replicator.units import MAX_SIZE


class UsageError(ReplicatorError):
    """The command line asks for something that cannot be done as asked."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the option and the problem) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _epilog() -> str:
    lines = ["exit codes:"]
    lines += [f"  {code:<3} {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


def _running(args: argparse.Namespace) -> LabInfo:
    info = lab_status(args.state_dir)
    if info is None:
        raise ReplicatorError("no lab is running (start one with: vsphere-replicator lab up)")
    return info


def _print_json(value: Any) -> None:
    print(json.dumps(value, sort_keys=True))


def cmd_lab_up(args: argparse.Namespace) -> int:
    info = start_lab(
        args.state_dir,
        vms=args.vms,
        disks_per_vm=args.disks_per_vm,
        disk_size=args.disk_size,
        hosts=args.hosts,
        cbt_window=args.cbt_window,
        cbt_block=args.cbt_block,
        latency_ms=args.latency_ms,
    )
    print(info.to_json())
    return EXIT_OK


def cmd_lab_status(args: argparse.Namespace) -> int:
    info = lab_status(args.state_dir)
    if info is None:
        print("no lab running", file=sys.stderr)
        return EXIT_FAILED
    print(info.to_json())
    return EXIT_OK


def cmd_lab_down(args: argparse.Namespace) -> int:
    if not stop_lab(args.state_dir):
        print("no lab running", file=sys.stderr)
    return EXIT_OK


def cmd_lab_env(args: argparse.Namespace) -> int:
    info = _running(args)
    values = {
        "VSPHERE_HOST": info.host,
        "VSPHERE_PORT": str(info.port),
        "VSPHERE_USER": info.user,
        "VSPHERE_PASSWORD": info.password,
        "VSPHERE_CA_FILE": info.ca_file,
        "VR_LAB_STATE_DIR": info.state_dir,
        "VSPHERE_REPLICATOR_MOUNTS": ",".join(f"{k}={v}" for k, v in info.datastores.items()),
    }
    for name, value in values.items():
        print(f"export {name}={shlex.quote(value)}")
    return EXIT_OK


def cmd_lab_write(args: argparse.Namespace) -> int:
    control = LabControl(_running(args))
    if args.file is not None:
        length, digest = control.write_file(args.vm, args.file, offset=args.offset, disk=args.disk)
    else:
        length = args.random
        digest = control.write_random_digest(
            args.vm, offset=args.offset, length=length, seed=args.seed, disk=args.disk
        )
    _print_json({"vm": args.vm, "disk": args.disk, "offset": args.offset, "length": length, "sha256": digest})
    return EXIT_OK


def cmd_lab_cbt_reset(args: argparse.Namespace) -> int:
    _print_json(LabControl(_running(args)).cbt_reset(args.vm, args.disk))
    return EXIT_OK


def cmd_lab_fault(args: argparse.Namespace) -> int:
    control = LabControl(_running(args))
    result: Any
    if args.fault_kind == "method":
        result = control.fail_method(args.method, args.fault, count=args.count, message=args.message)
    elif args.fault_kind == "expire-sessions":
        result = control.expire_sessions()
    elif args.fault_kind == "drop-connection":
        result = control.drop_connections(count=args.count, path=args.path)
    elif args.fault_kind == "slow-reads":
        result = control.slow_reads(args.delay_ms, count=args.count)
    elif args.fault_kind == "consolidation-needed":
        result = control.leave_consolidation_needed(count=args.count)
    elif args.fault_kind == "list":
        result = control.faults()
    else:
        control.clear_faults()
        result = {"cleared": True}
    _print_json(result)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo()
    ok = report.all_points_verified and report.test_copy_removed
    print("demo succeeded" if ok else "demo FAILED: a restore point did not match its source")
    return EXIT_OK if ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vsphere-replicator",
        description="Replicate VMware VMs to a secondary site through vCenter.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="protect, replicate and test-fail-over a VM on a temporary lab")
    demo.set_defaults(func=cmd_demo)

    lab = commands.add_parser("lab", help="the embedded vCenter simulator (docs/lab.md)")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--state-dir", type=Path, default=None, help="lab state directory")
        return p

    def lab_parser(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = lab_commands.add_parser(name, help=help)
        p.set_defaults(func=func)
        # `fault` takes it after its own sub-command, where argparse looks for it.
        return with_state_dir(p) if name != "fault" else p

    up = lab_parser("up", cmd_lab_up, "start a lab in the background and print its JSON line")
    up.add_argument("--vms", type=int_option(0, MAX_VMS), default=4)
    up.add_argument(
        "--disk-size", type=size_option(MIN_DISK_SIZE, MAX_DISK_SIZE, 512), default=64 << 20, metavar="SIZE"
    )
    up.add_argument("--disks-per-vm", type=int_option(1, MAX_DISKS_PER_VM), default=1)
    up.add_argument("--hosts", type=int_option(1, MAX_HOSTS), default=2)
    up.add_argument("--cbt-window", type=size_option(512, MAX_DISK_SIZE, 512), default=None, metavar="SIZE")
    up.add_argument("--cbt-block", type=size_option(512, MAX_DISK_SIZE, 512), default=None, metavar="SIZE")
    up.add_argument(
        "--latency-ms", type=int_option(0, MAX_LATENCY_MS), default=0, help="delay added to every SOAP call"
    )
    lab_parser("status", cmd_lab_status, "print the running lab's JSON line")
    lab_parser("down", cmd_lab_down, "stop the lab")
    lab_parser("env", cmd_lab_env, "print shell export lines for the running lab")

    write = lab_parser("write", cmd_lab_write, "write guest data into a VM's disk")
    write.add_argument("vm")
    write.add_argument("--disk", type=int_option(0, MAX_DISKS_PER_VM - 1), default=0)
    write.add_argument("--offset", type=size_option(0, MAX_DISK_SIZE), required=True, metavar="BYTES")
    source = write.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--random", type=size_option(1, MAX_WRITE), metavar="LEN", help="write LEN random bytes (up to 1G)"
    )
    source.add_argument("--file", help="write the bytes of this regular file (up to 1G)")
    write.add_argument("--seed", type=int_option(0, MAX_SIZE), default=None, help="seed for --random")

    reset = lab_parser("cbt-reset", cmd_lab_cbt_reset, "regenerate a VM's CBT identity (stale change ids)")
    reset.add_argument("vm")
    reset.add_argument("--disk", type=int_option(0, MAX_DISKS_PER_VM - 1), default=None)

    fault = lab_parser("fault", cmd_lab_fault, "inject a bounded, self-clearing fault")
    kinds = fault.add_subparsers(dest="fault_kind", required=True)
    method = with_state_dir(
        kinds.add_parser("method", help="fail the next calls of a method with a vim25 fault")
    )
    method.add_argument("method")
    method.add_argument("fault")
    count = int_option(1, MAX_FAULT_COUNT)
    method.add_argument("--count", type=count, default=1)
    method.add_argument("--message", default=None)
    with_state_dir(kinds.add_parser("expire-sessions", help="expire every current session"))
    drop = with_state_dir(kinds.add_parser("drop-connection", help="cut the next responses half-way"))
    drop.add_argument("--count", type=count, default=1)
    drop.add_argument("--path", choices=["sdk", "folder", "any"], default="any")
    slow = with_state_dir(kinds.add_parser("slow-reads", help="delay the next datastore reads"))
    slow.add_argument("--delay-ms", type=int_option(1, MAX_DELAY_MS), required=True)
    slow.add_argument("--count", type=count, default=1)
    consolidation = with_state_dir(
        kinds.add_parser("consolidation-needed", help="leave consolidationNeeded set after snapshot removals")
    )
    consolidation.add_argument("--count", type=count, default=1)
    with_state_dir(kinds.add_parser("list", help="show armed faults"))
    with_state_dir(kinds.add_parser("clear", help="disarm every fault"))
    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (EXIT_CODES says what each means)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Warnings (a disk resynced, a cycle resumed, an orphan removed) on stderr, readable; info with -v.
    configure_logging(json=os.environ.get("VSPHERE_REPLICATOR_LOG") == "json", level=logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Busy as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ReplicatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the machine, not the input: a full disk, a permission, a closed pipe
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug: one line, not a traceback, and a way to tell it from bad input
        first = (str(exc).splitlines() or [""])[0][:200]
        print(f"error: internal error: {type(exc).__name__}: {first}; please report", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
