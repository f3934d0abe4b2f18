"""The `lab` commands (the embedded vCenter simulator, docs/lab.md) and `demo`.

Every lab command finds its lab through `--state-dir`, else VR_LAB_STATE_DIR
(which `lab env` exports), else the per-user state directory; `--site NAME`
addresses another vCenter's lab, in that directory's `-site-NAME` sibling.
`lab fault` takes `--state-dir` and `--site` before its kind as well as after it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from vsphere_replicator.cli.exits import EXIT_FAILED, EXIT_OK
from vsphere_replicator.cli.options import (
    Command,
    Commands,
    add_state_dir_option,
    int_option,
    size_option,
)
from vsphere_replicator.cli.output import print_json
from vsphere_replicator.cli.profiles import (
    LAB_STATE_VARIABLE,
    MOUNTS_VARIABLE,
    TRANSPORT_VARIABLE,
    VDDK_PLUGIN_VARIABLE,
    lab_environment,
    running_lab,
)
from vsphere_replicator.demo import run_demo
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.lab import LabControl, lab_status, start_lab, stop_lab
from vsphere_replicator.lab.control import (
    DROP_PATHS,
    MAX_DELAY_MS,
    MAX_FAULT_COUNT,
    MAX_WRITE,
    QUIESCE_FAULTS,
    TOOLS_STATES,
)
from vsphere_replicator.lab.process import (
    MAX_DISK_SIZE,
    MAX_DISKS_PER_VM,
    MAX_HOSTS,
    MAX_LATENCY_MS,
    MAX_VMS,
    MIN_DISK_SIZE,
    STAR_ANSWERS,
    check_site,
    default_state_dir,
)
from vsphere_replicator.units import MAX_SIZE, format_size

# `lab env --as ROLE`: the variables of a two-site protection's source or target connection.
ENV_ROLES = ("default", "source", "target")


def _state_dir(args: argparse.Namespace) -> Path | None:
    """--state-dir, else the --site's state directory, else None (VR_LAB_STATE_DIR or the per-user one)."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    site = getattr(args, "site", None)
    return default_state_dir(site) if site else None


def _site(text: str) -> str:
    try:
        site = check_site(text)
    except InvalidInput as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if site is None:
        raise argparse.ArgumentTypeError("a site name cannot be empty")
    return site


def add_site_option(parser: argparse.ArgumentParser, *, inner: bool = False) -> None:
    """--site of the lab; `inner` as for --state-dir (a sub-command's copy of its parent's option)."""
    parser.add_argument(
        "--site",
        type=_site,
        default=argparse.SUPPRESS if inner else None,
        metavar="NAME",
        help="another vCenter's lab (state in the default directory's -site-NAME sibling)",
    )


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def cmd_lab_up(args: argparse.Namespace) -> int:
    info = start_lab(
        _state_dir(args),
        site=args.site,
        vms=args.vms,
        disks_per_vm=args.disks_per_vm,
        disk_size=args.disk_size,
        hosts=args.hosts,
        cbt_window=args.cbt_window,
        cbt_block=args.cbt_block,
        latency_ms=args.latency_ms,
        dc_folder=args.dc_folder,
        lock_running_disks=args.lock_running_disks,
        redo_logs=args.redo_logs,
        datastore_kinds=dict(args.datastore_kind),
        star_answers=dict(args.star_answer),
    )
    print(info.to_json())
    return EXIT_OK


def cmd_lab_status(args: argparse.Namespace) -> int:
    info = lab_status(_state_dir(args))
    if info is None:
        print("no lab running", file=sys.stderr)
        return EXIT_FAILED
    print(info.to_json())
    return EXIT_OK


def cmd_lab_down(args: argparse.Namespace) -> int:
    if not stop_lab(_state_dir(args)):
        print("no lab running", file=sys.stderr)
    return EXIT_OK


def cmd_lab_env(args: argparse.Namespace) -> int:
    info = running_lab(_state_dir(args))
    env = lab_environment(info)
    mounts = env.pop(MOUNTS_VARIABLE)
    # The transport and the VDDK plugin serve every site alike: never a role's.
    data_path = {name: env.pop(name) for name in (TRANSPORT_VARIABLE, VDDK_PLUGIN_VARIABLE)}
    if args.role == "default":
        values = {**env, LAB_STATE_VARIABLE: info.state_dir, MOUNTS_VARIABLE: mounts, **data_path}
    else:
        # VSPHERE_SOURCE_HOST ...: the profile the role names; the site's datastores in the role's mounts.
        role = args.role.upper()
        values = {name.replace("VSPHERE_", f"VSPHERE_{role}_", 1): value for name, value in env.items()}
        values[f"VSPHERE_REPLICATOR_{role}_MOUNTS"] = mounts
        values.update(data_path)
    for name, value in values.items():
        print(f"export {name}={shlex.quote(value)}")
    return EXIT_OK


def cmd_lab_write(args: argparse.Namespace) -> int:
    control = LabControl(running_lab(_state_dir(args)))
    if args.file is not None:
        length, digest = control.write_file(args.vm, args.file, offset=args.offset, disk=args.disk)
    else:
        length = args.random
        digest = control.write_random_digest(
            args.vm, offset=args.offset, length=length, seed=args.seed, disk=args.disk
        )
    print_json({"vm": args.vm, "disk": args.disk, "offset": args.offset, "length": length, "sha256": digest})
    return EXIT_OK


def cmd_lab_cbt_reset(args: argparse.Namespace) -> int:
    print_json(LabControl(running_lab(_state_dir(args))).cbt_reset(args.vm, args.disk))
    return EXIT_OK


def cmd_lab_tools(args: argparse.Namespace) -> int:
    print_json(LabControl(running_lab(_state_dir(args))).set_tools(args.vm, args.state))
    return EXIT_OK


def cmd_lab_fault(args: argparse.Namespace) -> int:
    control = LabControl(running_lab(_state_dir(args)))
    result: dict[str, Any] | list[dict[str, Any]]
    if args.fault_kind == "method":
        result = control.fail_method(args.method, args.fault, count=args.count, message=args.message)
    elif args.fault_kind == "expire-sessions":
        result = control.expire_sessions()
    elif args.fault_kind == "drop-connection":
        result = control.drop_connections(count=args.count, path=args.path)
    elif args.fault_kind == "slow-reads":
        result = control.slow_reads(args.delay_ms, count=args.count)
    elif args.fault_kind == "slow-task":
        result = control.slow_tasks(args.method, args.delay_ms, count=args.count)
    elif args.fault_kind == "quiesce":
        result = control.fail_quiesce(args.fault, count=args.count, message=args.message)
    elif args.fault_kind == "consolidation-needed":
        result = control.leave_consolidation_needed(count=args.count)
    elif args.fault_kind == "star-answer":
        result = control.set_star_answer(args.datastore, None if args.answer == "default" else args.answer)
    elif args.fault_kind == "list":
        result = control.faults()
    else:
        control.clear_faults()
        result = {"cleared": True}
    print_json(result)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo()
    ok = report.all_points_verified and report.test_copy_removed
    print("demo succeeded" if ok else "demo FAILED: a restore point did not match its source")
    return EXIT_OK if ok else EXIT_FAILED


def add_commands(commands: Commands) -> None:
    """Register `demo` and `lab …` on the main parser's sub-command set."""
    demo = commands.add_parser("demo", help="protect, replicate and test-fail-over a VM on a temporary lab")
    demo.set_defaults(func=cmd_demo)

    lab = commands.add_parser("lab", help="the embedded vCenter simulator (docs/lab.md)")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    def command(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = lab_commands.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        add_state_dir_option(p)
        add_site_option(p)
        return p

    disk_size = size_option(MIN_DISK_SIZE, MAX_DISK_SIZE, 512)
    up = command("up", cmd_lab_up, "start a lab in the background and print its JSON line")
    up.add_argument("--vms", type=int_option(0, MAX_VMS), default=4, metavar="N", help="VMs to create")
    up.add_argument(
        "--disk-size", type=disk_size, default=format_size(64 << 20), metavar="SIZE", help="each disk's size"
    )
    up.add_argument(
        "--disks-per-vm", type=int_option(1, MAX_DISKS_PER_VM), default=1, metavar="N", help="disks per VM"
    )
    up.add_argument("--hosts", type=int_option(1, MAX_HOSTS), default=2, metavar="N", help="ESXi hosts")
    window = size_option(512, MAX_DISK_SIZE, 512)
    up.add_argument(
        "--cbt-window",
        type=window,
        default=None,
        metavar="SIZE",
        help="bytes one QueryChangedDiskAreas answer covers (default: the lab's, 16M)",
    )
    up.add_argument(
        "--cbt-block",
        type=window,
        default=None,
        metavar="SIZE",
        help="CBT's tracking granularity (default: the lab's, 64K)",
    )
    up.add_argument(
        "--latency-ms",
        type=int_option(0, MAX_LATENCY_MS),
        default=0,
        metavar="MS",
        help="delay added to every SOAP call",
    )
    up.add_argument(
        "--dc-folder",
        default=None,
        metavar="PATH",
        help="put the datacenter inside this folder path (Sites: its dcPath becomes Sites/DC0)",
    )
    up.add_argument(
        "--lock-running-disks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="/folder refuses a powered-on VM's current disk layer with 500, as vCenter does (the "
        "default; --no-lock-running-disks serves it, which no vCenter does)",
    )
    up.add_argument(
        "--redo-logs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="snapshot layers are vmfsSparse redo logs (-delta.vmdk), as on ESXi: only VDDK reads them "
        "(the default; --no-redo-logs makes every layer a flat image, for --transport mount)",
    )
    up.add_argument(
        "--datastore-kind",
        type=_name_value,
        action="append",
        default=[],
        metavar="NAME=KIND",
        help="a datastore's kind, vmfs (default), nfs or vsan; a new NAME adds a datastore (repeatable)",
    )
    up.add_argument(
        "--star-answer",
        type=_name_value,
        action="append",
        default=[],
        metavar="NAME=ANSWER",
        help='what QueryChangedDiskAreas(changeId="*") answers on NAME: allocated, whole or fault '
        "(default: allocated on VMFS, whole on NFS and vSAN; repeatable)",
    )
    command("status", cmd_lab_status, "print the running lab's JSON line")
    command("down", cmd_lab_down, "stop the lab")
    env = command("env", cmd_lab_env, "print shell export lines for the running lab")
    env.add_argument(
        "--as",
        dest="role",
        choices=ENV_ROLES,
        default="default",
        help="default: VSPHERE_* and VSPHERE_REPLICATOR_MOUNTS; source or target: VSPHERE_SOURCE_* "
        "or VSPHERE_TARGET_* and VSPHERE_REPLICATOR_SOURCE_MOUNTS or ..._TARGET_MOUNTS",
    )

    write = command("write", cmd_lab_write, "write guest data into a VM's disk")
    write.add_argument("vm")
    write.add_argument(
        "--disk", type=int_option(0, MAX_DISKS_PER_VM - 1), default=0, metavar="N", help="the disk's position"
    )
    write.add_argument(
        "--offset",
        type=size_option(0, MAX_DISK_SIZE),
        required=True,
        metavar="BYTES",
        help="where in the disk",
    )
    source = write.add_mutually_exclusive_group(required=True)
    limit = format_size(MAX_WRITE)
    source.add_argument(
        "--random",
        type=size_option(1, MAX_WRITE),
        metavar="LEN",
        help=f"write LEN random bytes (up to {limit})",
    )
    source.add_argument("--file", help=f"write the bytes of this regular file (up to {limit})")
    write.add_argument(
        "--seed", type=int_option(0, MAX_SIZE), default=None, metavar="N", help="seed for --random"
    )

    reset = command("cbt-reset", cmd_lab_cbt_reset, "regenerate a VM's CBT identity (stale change ids)")
    reset.add_argument("vm")
    reset.add_argument(
        "--disk",
        type=int_option(0, MAX_DISKS_PER_VM - 1),
        default=None,
        metavar="N",
        help="only this disk (default: every disk)",
    )

    tools = command("tools", cmd_lab_tools, "set a VM's VMware Tools state (quiesced snapshots need running)")
    tools.add_argument("vm")
    tools.add_argument("--state", choices=TOOLS_STATES, required=True, help="the guest's VMware Tools")

    fault = command("fault", cmd_lab_fault, "inject a bounded, self-clearing fault")
    kinds = fault.add_subparsers(dest="fault_kind", required=True, metavar="KIND")

    def kind(name: str, help: str) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help, description=help)
        # `lab fault --state-dir D list` and `lab fault list --state-dir D` both work.
        add_state_dir_option(p, inner=True)
        add_site_option(p, inner=True)
        return p

    count = int_option(1, MAX_FAULT_COUNT)
    method = kind("method", "fail the next calls of a method with a vim25 fault")
    method.add_argument("method", help="the vim25 method, e.g. CreateSnapshot_Task")
    method.add_argument("fault", help="the vim25 fault, e.g. FileFault")
    method.add_argument("--count", type=count, default=1, metavar="N", help="calls to fail")
    method.add_argument("--message", default=None, help="the fault's message")
    kind("expire-sessions", "expire every current session")
    drop = kind("drop-connection", "cut the next responses half-way")
    drop.add_argument("--count", type=count, default=1, metavar="N", help="responses to cut")
    drop.add_argument("--path", choices=DROP_PATHS, default="any", help="which endpoint's responses")
    slow = kind("slow-reads", "delay the next datastore reads")
    slow.add_argument(
        "--delay-ms", type=int_option(1, MAX_DELAY_MS), required=True, metavar="MS", help="delay per read"
    )
    slow.add_argument("--count", type=count, default=1, metavar="N", help="reads to delay")
    slow_task = kind("slow-task", "make the next tasks of a method last longer (the VM stays busy)")
    slow_task.add_argument("method", help="the task method, e.g. CreateSnapshot_Task")
    slow_task.add_argument(
        "--delay-ms", type=int_option(1, MAX_DELAY_MS), required=True, metavar="MS", help="delay per task"
    )
    slow_task.add_argument("--count", type=count, default=1, metavar="N", help="tasks to slow down")
    quiesce = kind("quiesce", "fail the next quiesced snapshots with a quiesce fault")
    quiesce.add_argument("fault", choices=QUIESCE_FAULTS, help="the SnapshotFault to fail with")
    quiesce.add_argument("--count", type=count, default=1, metavar="N", help="quiesced snapshots to fail")
    quiesce.add_argument("--message", default=None, help="the fault's message")
    consolidation = kind("consolidation-needed", "leave consolidationNeeded set after snapshot removals")
    consolidation.add_argument("--count", type=count, default=1, metavar="N", help="removals to affect")
    star = kind("star-answer", 'set what QueryChangedDiskAreas(changeId="*") answers on a datastore (stays)')
    star.add_argument("datastore", help="the datastore's name, e.g. primary-ds")
    star.add_argument(
        "answer", choices=(*STAR_ANSWERS, "default"), help="allocated, whole, fault, or the kind's default"
    )
    kind("list", "show armed faults")
    kind("clear", "disarm every fault")
