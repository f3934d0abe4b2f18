"""Bad input, tried on purpose: one clear line naming the problem, the right exit code, nothing changed.

Each case is an input a user or a caller might really give — the CLI's
argv (run as a separate process, as a user runs it) or a library call — with
the exit code (or exception class) it must end with and a fragment of the
one line that must say what is wrong. Every case also checks that no
traceback was printed and that nothing changed in vCenter: the VMs, their
snapshots, our extraConfig keys and CBT flags are read again through plain
pyVmomi and compared with a reading taken before the first case; the disk
files of the VM that the `lab write` cases aim at must be untouched, and no
lab fault may be armed.

The VM every `replicate` case names is protected and has a pending guest
write, so a cycle that started by mistake would leave a snapshot and a
journal behind. Set VR_BAD_INPUT_TABLE=FILE to write the table of what was
observed (the "Bad inputs tried" section of docs/reliability.md).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests import labutil
from tests.conftest import _fresh_vm, logged_in
from tests.test_replication_crash import cli_env
from vsphere_replicator import (
    ConnectionFailed,
    InvalidInput,
    NotFound,
    ReplicatorError,
    RetryPolicy,
    VMSelector,
    connect,
    create_snapshot,
    find_orphans,
    find_vms,
    get_vm,
    remove_snapshot,
    sweep_orphans,
)
from vsphere_replicator.lab import LabControl, LabInfo, start_lab
from vsphere_replicator.policies import (
    Limits,
    PolicyFileError,
    Selection,
    load_policy_file,
    parse_policy_file,
    run_policies,
)
from vsphere_replicator.replication import (
    CycleSettings,
    MountedDatastores,
    ReplicaTarget,
    protect,
    replicate,
)
from vsphere_replicator.replication.status import protection_status
from vsphere_replicator.units import parse_duration, parse_size

OURS = "vsphere_replicator."
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[")  # a structured warning (a retry), not the error


@dataclass(frozen=True)
class Cli:
    """`vsphere-replicator ARGV` with `env` added; {vm}, {fresh}, {tmp} and {lab} are filled in."""

    argv: tuple[str, ...]
    code: int
    message: str
    env: tuple[tuple[str, str], ...] = ()
    lease: bool = False  # the command takes the VM's lease (a reconfigure) and gives it back before refusing


@dataclass(frozen=True)
class Call:
    """A library call, shown as `text` in the table."""

    text: str
    call: Callable[[Any], object]
    error: type[ReplicatorError]
    message: str


def cli(*argv: str, code: int, message: str, lease: bool = False, **env: str) -> Cli:
    return Cli(argv, code, message, tuple(env.items()), lease)


LAB = ("--state-dir", "{lab}")
CLI_CASES = [
    # replicate: transfer options, checked before a connection is made
    cli("replicate", "{vm}", "--chunk", "0", code=2, message="argument --chunk: must be from 64K to 64M"),
    cli("replicate", "{vm}", "--chunk", "1000", code=2, message="in steps of 64K, not '1000'"),
    cli("replicate", "{vm}", "--chunk", "1T", code=2, message="argument --chunk: must be from 64K to 64M"),
    cli("replicate", "{vm}", "--chunk", "96K", code=2, message="in steps of 64K, not '96K'"),
    cli("replicate", "{vm}", "--chunk=-1M", code=2, message="argument --chunk: not a size: '-1M'"),
    cli("replicate", "{vm}", "--chunk", "4 MB/s", code=2, message="not a size: '4 MB/s'"),
    cli("replicate", "{vm}", "--checkpoint-every", "0", code=2, message="argument --checkpoint-every"),
    cli(
        "replicate",
        "{vm}",
        "--checkpoint-every",
        "1M",
        "--chunk",
        "4M",
        code=2,
        message="--checkpoint-every (1M) must be at least one --chunk (4M)",
    ),
    cli("replicate", "{vm}", "--checkpoint-every", "99999999999999999999T", code=2, message="size too large"),
    # replicate: what each cycle keeps
    cli("replicate", "{vm}", "--keep", "0", code=2, message="argument --keep: must be between 1 and 24"),
    cli("replicate", "{vm}", "--keep", "-3", code=2, message="must be between 1 and 24, not '-3'"),
    cli("replicate", "{vm}", "--keep", "99999999999999999999", code=2, message="must be between 1 and 24"),
    cli("replicate", "{vm}", "--keep", "three", code=2, message="not a whole number: 'three'"),
    cli("replicate", "{vm}", "--max-change-share", "0", code=2, message="above 0 and at most 1, not '0'"),
    cli("replicate", "{vm}", "--max-change-share", "1.5", code=2, message="above 0 and at most 1"),
    cli("replicate", "{vm}", "--max-change-share", "nan", code=2, message="not 'nan'"),
    cli("replicate", "{vm}", "--max-change-share=-inf", code=2, message="not '-inf'"),
    cli("replicate", "{vm}", "--max-age", "99999999999999d", code=2, message="at most 36500d (100 years)"),
    cli("replicate", "{vm}", "--max-age", "0s", code=2, message="a duration must be longer than zero"),
    cli("replicate", "{vm}", "--max-age", "5", code=2, message="not a duration: '5'"),
    cli("replicate", "{vm}", "--max-age", "1h 30m", code=2, message="not a duration: '1h 30m'"),
    cli("replicate", "{vm}", "--rpo", "9" * 5000 + "s", code=2, message="at most 36500d (100 years)"),
    cli("replicate", "{vm}", "--quiesce", "sometimes", code=2, message="invalid choice: 'sometimes'"),
    # replicate: where the replica is written, and which VM
    cli("replicate", "{vm}", "--mount", "garbage", code=2, message="NAME=DIRECTORY, not 'garbage'"),
    cli(
        "replicate",
        "{vm}",
        "--mount",
        "secondary-ds=/nonexistent",
        code=2,
        message="not a flat extent a mount can serve; use the VDDK transport",  # a redo log since rp-000001
    ),
    cli("replicate", "no-such-vm", code=1, message="no VM matches name='no-such-vm'"),
    cli("replicate", "{fresh}", code=1, message="is not protected: run protect first"),
    cli("replicate", code=2, message="name a VM, or a recovery plan with --plan"),
    cli("replicate", "{vm}", "--plan", "web", code=2, message="name a VM, or a recovery plan with --plan"),
    cli("failover", "--test", code=2, message="name a VM, or a recovery plan with --plan"),
    cli("failover", "{vm}", "--unplanned", "--at", "2026-11-26T09:30", code=2, message="--at picks a plan"),
    cli(
        "failover",
        "{vm}",
        "--planned",
        "--test-network",
        "a=b",
        code=2,
        message="--test-network applies to --test only",
    ),
    cli("protect", "{vm}", "--datastore", "secondary-ds", "--tier", "2", code=2, message="go with --plan"),
    cli(
        "protect",
        "{vm}",
        "--datastore",
        "secondary-ds",
        "--recovery-ip",
        "10.0.0.1",
        code=2,
        message="ADDRESS/PREFIX",
    ),
    # the connection
    cli("status", code=1, message="cannot connect to 127.0.0.1:1: connection refused", VSPHERE_PORT="1"),
    cli("status", code=2, message="VSPHERE_PORT must be a port number, got 'x'", VSPHERE_PORT="x"),
    cli("status", code=2, message="port must be between 1 and 65535", VSPHERE_PORT="70000"),
    cli("status", code=1, message="refused the user name or password", VSPHERE_PASSWORD="wrong"),
    cli("status", code=2, message="CA file /nonexistent does not exist", VSPHERE_CA_FILE="/nonexistent"),
    cli("status", code=2, message="thumbprint must be a SHA-256 digest", VSPHERE_THUMBPRINT="abc"),
    cli("status", "--profile", "nope", code=2, message="profile 'nope' is not set"),
    # other commands' durations
    cli("status", "--rpo", "99999999999999d", code=2, message="argument --rpo: a duration must be at most"),
    cli("snapshots", "list", "--older-than", "99999999999999d", code=2, message="argument --older-than"),
    cli("snapshots", "sweep", "--older-than=-1h", code=2, message="not a duration: '-1h'"),
    cli("snapshots", "prune", code=2, message="invalid choice: 'prune'"),
    # protect: the target, refused before the source VM is touched
    cli("protect", "{fresh}", "--datastore", "", code=2, message="a replica target needs a datastore"),
    cli(
        "protect",
        "{fresh}",
        "--datastore",
        "secondary-ds",
        "--name",
        "replica",
        code=2,
        message="must contain {vm}",
    ),
    cli(
        "protect",
        "{fresh}",
        "--datastore",
        "secondary-ds",
        "--network",
        "badpair",
        code=2,
        message="--network is SOURCE_PORT_GROUP=RECOVERY_PORT_GROUP, not 'badpair'",
    ),
    cli("protect", "{fresh}", "--datastore", "secondary-ds", "--keep", "25", code=2, message="--keep"),
    cli("protect", "{fresh}", "--datastore", "no-such-ds", code=1, message="no Datastore named 'no-such-ds'"),
    cli(
        "protect",
        "{fresh}",
        "--datastore",
        "secondary-ds",
        "--host",
        "no-such-host",
        code=1,
        message="no HostSystem named 'no-such-host'",
    ),
    cli(
        "protect",
        "{fresh}",
        "--datastore",
        "secondary-ds",
        "--folder",
        "DC0/vm/nowhere",
        code=1,
        message="no Folder named 'DC0/vm/nowhere'",
    ),
    # policy files
    cli("run", "/dev/zero", code=2, message="/dev/zero: not a regular file"),
    cli(
        "run", "{tmp}/missing.yaml", code=2, message="cannot read the policy file: No such file or directory"
    ),
    cli("run", "{tmp}", code=2, message="cannot read the policy file"),
    cli("run", "{tmp}/deep.yaml", code=2, message="deep.yaml:2:45: refused: nested deeper than 32 levels"),
    cli("run", "{tmp}/laughs.yaml", code=2, message="more than 100000 values once aliases are expanded"),
    cli("run", "{tmp}/big.yaml", code=2, message="big.yaml: larger than 1 MiB"),
    cli("run", "{tmp}/latin1.yaml", code=2, message="not UTF-8 text (byte 0xe9)"),
    cli("run", "{tmp}/huge-int.yaml", code=2, message="invalid value: '9999"),
    cli("run", "{tmp}/policy.yaml", "--max-cycles", "0", code=2, message="argument --max-cycles"),
    # failover, failback, verify
    cli(
        "failover",
        "{vm}",
        "--planned",
        "--restore-point",
        "rp-000001",
        code=2,
        message="a planned failover always brings up the newest data",
    ),
    cli("failover", "{vm}", code=2, message="say which failover: --test"),
    cli(
        "failover",
        "{vm}",
        "--unplanned",
        "--restore-point",
        "rp-999999",
        code=1,
        message="has no restore point 'rp-999999'",
        lease=True,
    ),
    cli("failover", "{vm}", "--test", "--planned", code=2, message="not allowed with argument --test"),
    cli("failback", "{fresh}", code=1, message="has not failed over: there is nothing to fail back"),
    cli("verify", "{vm}", "--restore-point", "nope", code=1, message="has no restore point 'nope'"),
    cli("restore-points", "no-such-vm", code=1, message="no VM matches name='no-such-vm'"),
    # the lab's guest writes
    cli(
        "lab",
        "write",
        "{fresh}",
        "--offset",
        "0",
        "--random",
        "100T",
        *LAB,
        code=2,
        message="from 1 to 1G, not '100T'",
    ),
    cli("lab", "write", "{fresh}", "--offset", "0", "--random", "0", *LAB, code=2, message="from 1 to 1G"),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--offset",
        "-1",
        "--random",
        "1K",
        *LAB,
        code=2,
        message="not a size: '-1'",
    ),
    cli(
        "lab", "write", "{fresh}", "--offset", "100T", "--random", "1K", *LAB, code=2, message="from 0 to 62T"
    ),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--offset",
        "32M",
        "--random",
        "1K",
        *LAB,
        code=1,
        message="write of 1024 bytes at offset 33554432 does not fit disk 0",
    ),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--offset",
        "0",
        "--random",
        "1G",
        *LAB,
        code=1,
        message="lab write of 1073741824 bytes at offset 0 refused",
    ),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--offset",
        "0",
        "--file",
        "/dev/zero",
        *LAB,
        code=2,
        message="not a regular",
    ),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--offset",
        "0",
        "--file",
        "{tmp}/missing.bin",
        *LAB,
        code=2,
        message="No such file or directory",
    ),
    cli(
        "lab", "write", "{fresh}", "--offset", "0", "--file", "{tmp}/empty.bin", *LAB, code=2, message="empty"
    ),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--disk",
        "15",
        "--offset",
        "0",
        "--random",
        "1K",
        *LAB,
        code=2,
        message="--disk",
    ),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--disk",
        "2",
        "--offset",
        "0",
        "--random",
        "1K",
        *LAB,
        code=1,
        message="disk 2 does not exist",
    ),
    cli("lab", "write", "no-such-vm", "--offset", "0", "--random", "1K", *LAB, code=1, message="no VM named"),
    cli(
        "lab",
        "write",
        "{fresh}",
        "--offset",
        "0",
        "--random",
        "1K",
        "--seed",
        "x",
        *LAB,
        code=2,
        message="--seed",
    ),
    cli("lab", "cbt-reset", "{fresh}", "--disk", "-1", *LAB, code=2, message="argument --disk"),
    # the lab's faults and the lab itself
    cli(
        "lab",
        "fault",
        "method",
        "RetrieveProperties",
        "NoSuchFault",
        *LAB,
        code=1,
        message="not a vSphere fault",
    ),
    cli("lab", "fault", "method", "X", "InvalidArgument", "--count", "0", *LAB, code=2, message="--count"),
    cli("lab", "fault", "slow-reads", "--delay-ms", "0", *LAB, code=2, message="between 1 and 10000"),
    cli(
        "lab", "fault", "slow-reads", "--delay-ms", "99999999999999999999", *LAB, code=2, message="--delay-ms"
    ),
    cli("lab", "fault", "drop-connection", "--count", "1001", *LAB, code=2, message="between 1 and 1000"),
    cli("lab", "fault", "drop-connection", "--path", "nowhere", *LAB, code=2, message="invalid choice"),
    cli("lab", "up", "--vms", "-1", "--state-dir", "{tmp}/lab", code=2, message="between 0 and 10000"),
    cli("lab", "up", "--disk-size", "0", "--state-dir", "{tmp}/lab", code=2, message="from 1M to 62T"),
    cli("lab", "up", "--disk-size", "100T", "--state-dir", "{tmp}/lab", code=2, message="from 1M to 62T"),
    cli("lab", "up", "--cbt-block", "1536", "--state-dir", "{tmp}/lab", code=2, message="power of two"),
    cli("lab", "up", "--latency-ms", "20000", "--state-dir", "{tmp}/lab", code=2, message="--latency-ms"),
    cli("lab", "up", "--hosts", "0", "--state-dir", "{tmp}/lab", code=2, message="--hosts"),
    cli("nonsense", code=2, message="invalid choice: 'nonsense'"),
]


def wrong(value: object) -> Any:
    """A value of the wrong type, passed on purpose: the type checker lets it by, the library must not."""
    return value


def no_sleep(_: float) -> None:
    return None


CALLS = [
    Call("replicate(conn, 123, ...)", lambda c: c.replicate(123), InvalidInput, "the VM must be a name"),
    Call("replicate(conn, None, ...)", lambda c: c.replicate(None), InvalidInput, "not NoneType None"),
    Call(
        'replicate("vc01", vm, ...)',
        lambda c: replicate(wrong("vc01"), c.vm, replica_access=c.access),
        InvalidInput,
        "conn must be Connection, not str 'vc01'",
    ),
    Call("replicate(..., chunk=0)", lambda c: c.replicate(chunk=0), InvalidInput, "chunk must be between"),
    Call("replicate(..., chunk=1000)", lambda c: c.replicate(chunk=1000), InvalidInput, "not 1000"),
    Call(
        "replicate(..., chunk=96 KiB)",
        lambda c: c.replicate(chunk=96 << 10),
        InvalidInput,
        "multiple of 64 KiB",
    ),
    Call('replicate(..., chunk="4M")', lambda c: c.replicate(chunk="4M"), InvalidInput, "a whole number"),
    Call("replicate(..., chunk=True)", lambda c: c.replicate(chunk=True), InvalidInput, "not bool True"),
    Call("replicate(..., workers=0)", lambda c: c.replicate(workers=0), InvalidInput, "between 1 and 64"),
    Call("replicate(..., workers=65)", lambda c: c.replicate(workers=65), InvalidInput, "not 65"),
    Call(
        "replicate(..., checkpoint_every=1)",
        lambda c: c.replicate(checkpoint_every=1),
        InvalidInput,
        "checkpoint_every must be between 4194304",
    ),
    Call(
        'replicate(..., settings={"keep": 3})',
        lambda c: c.replicate(settings={"keep": 3}),
        InvalidInput,
        "settings must be CycleSettings or None",
    ),
    Call(
        "replicate(..., replica_access=None)",
        lambda c: c.replicate(replica_access=None),
        InvalidInput,
        "replica_access must be a DiskAccess",
    ),
    Call(
        "get_vm(conn, None)", lambda c: get_vm(c.conn, wrong(None)), InvalidInput, "must be VMSelector or str"
    ),
    Call("get_vm(conn, 5)", lambda c: get_vm(c.conn, wrong(5)), InvalidInput, "not int 5"),
    Call('find_vms(conn, "lab-vm")', lambda c: find_vms(c.conn, c.vm), InvalidInput, "selector must be"),
    Call("VMSelector(name=5)", lambda c: VMSelector(name=wrong(5)), InvalidInput, "name must be str or None"),
    Call("VMSelector()", lambda c: VMSelector(), InvalidInput, "needs a name, glob, moref"),
    Call(
        "ReplicaTarget(datastore=5)", lambda c: ReplicaTarget(datastore=wrong(5)), InvalidInput, "must be str"
    ),
    Call(
        'ReplicaTarget(..., networks=[("a", "b")])',
        lambda c: ReplicaTarget(datastore="secondary-ds", networks=wrong([("a", "b")])),
        InvalidInput,
        "must be tuple, not list",
    ),
    Call(
        'ReplicaTarget(..., name="replica")',
        lambda c: ReplicaTarget(datastore="secondary-ds", name="replica"),
        InvalidInput,
        "must contain {vm}",
    ),
    Call(
        'CycleSettings(keep="3")',
        lambda c: CycleSettings(keep=wrong("3")),
        InvalidInput,
        "keep must be a whole",
    ),
    Call("CycleSettings(keep=0)", lambda c: CycleSettings(keep=0), InvalidInput, "between 1 and 24"),
    Call(
        "CycleSettings(max_age=40000 days)",
        lambda c: CycleSettings(max_age=timedelta(days=40000)),
        InvalidInput,
        "max_age must be at most 36500d",
    ),
    Call(
        "CycleSettings(max_change_share=nan)",
        lambda c: CycleSettings(max_change_share=float("nan")),
        InvalidInput,
        "must be in (0, 1], not nan",
    ),
    Call(
        'CycleSettings(verify="yes")',
        lambda c: CycleSettings(verify=wrong("yes")),
        InvalidInput,
        "verify must be",
    ),
    Call('connect(port="x")', lambda c: c.connect(port="x"), InvalidInput, "port must be int or None"),
    Call("connect(host=5)", lambda c: c.connect(host=5), InvalidInput, "host must be str or None"),
    Call("connect(port=1)", lambda c: c.connect(port=1), ConnectionFailed, "cannot connect to 127.0.0.1:1"),
    Call("RetryPolicy(attempts=0)", lambda c: RetryPolicy(attempts=0), InvalidInput, "between 1 and 100"),
    Call(
        'protect(conn, vm, "secondary-ds")',
        lambda c: protect(c.conn, c.fresh, wrong("secondary-ds")),
        InvalidInput,
        "target must be ReplicaTarget",
    ),
    Call(
        'protect(conn, vm, ReplicaTarget(datastore="no-such-ds"))',
        lambda c: protect(c.conn, c.fresh, ReplicaTarget(datastore="no-such-ds")),
        NotFound,
        "no Datastore named 'no-such-ds'",
    ),
    Call(
        "create_snapshot(conn, vm, 5)",
        lambda c: create_snapshot(c.conn, c.fresh, wrong(5)),
        InvalidInput,
        "snapshot name must be str",
    ),
    Call(
        "remove_snapshot(conn, vm, None)",
        lambda c: remove_snapshot(c.conn, c.fresh, wrong(None)),
        InvalidInput,
        "snapshot must be SnapshotInfo",
    ),
    Call(
        "find_orphans(conn, older_than=5)",
        lambda c: find_orphans(c.conn, older_than=wrong(5)),
        InvalidInput,
        "older_than must be timedelta",
    ),
    Call(
        "sweep_orphans(conn, older_than=-1 h)",
        lambda c: sweep_orphans(c.conn, older_than=timedelta(hours=-1)),
        InvalidInput,
        "older_than must not be negative",
    ),
    Call(
        "protection_status(conn, target_rpo=0)",
        lambda c: protection_status(c.conn, target_rpo=timedelta(0)),
        InvalidInput,
        "target_rpo must be positive",
    ),
    Call(
        "parse_policy_file(a 5000-deep list)",
        lambda c: parse_policy_file("version: 1\nprotections: " + "[" * 5000 + "]" * 5000),
        PolicyFileError,
        "<string>:2:45: refused: nested deeper than 32 levels",
    ),
    Call(
        'load_policy_file("/dev/zero")',
        lambda c: load_policy_file("/dev/zero"),
        PolicyFileError,
        "/dev/zero: not a regular file",
    ),
    Call(
        "LabControl.write_random(vm, offset=0, length=100 TiB)",
        lambda c: c.control.write_random(c.fresh, offset=0, length=100 << 40),
        InvalidInput,
        "length must be between 1 and 1073741824 bytes",
    ),
    Call(
        'LabControl.write(vm, b"", offset=0)',
        lambda c: c.control.write(c.fresh, b"", offset=0),
        InvalidInput,
        "a lab write carries 1 byte to 1 GiB",
    ),
    Call(
        "LabControl.write_file(vm, /dev/zero, offset=0)",
        lambda c: c.control.write_file(c.fresh, "/dev/zero", offset=0),
        InvalidInput,
        "/dev/zero is not a regular file",
    ),
    Call(
        "LabControl.slow_reads(0)",
        lambda c: c.control.slow_reads(0),
        InvalidInput,
        "delay_ms must be between 1 and 10000",
    ),
    Call(
        "start_lab(dir, vms=-1)",
        lambda c: start_lab(c.tmp / "lab", vms=-1),
        InvalidInput,
        "vms must be between 0 and 10000",
    ),
    Call(
        'parse_size("99999999999999999999T")',
        lambda c: parse_size("99999999999999999999T"),
        InvalidInput,
        "size too large",
    ),
    Call(
        'parse_duration("99999999999999d")',
        lambda c: parse_duration("99999999999999d"),
        InvalidInput,
        "a duration must be at most 36500d (100 years)",
    ),
    Call(
        'run_policies("policy.yaml", engine, once=True)',
        lambda c: run_policies(wrong("policy.yaml"), wrong(None), once=True),
        InvalidInput,
        "policy_file (load it with load_policy_file) must be PolicyFile",
    ),
    Call(
        'Limits(total="4")', lambda c: Limits(total=wrong("4")), InvalidInput, "limits.total must be a whole"
    ),
    Call(
        'Selection(names="web-*")',
        lambda c: Selection(names=wrong("web-*")),
        InvalidInput,
        "selection names must be a tuple of strings",
    ),
]


# -- the lab, a protected VM with a pending write, and what vCenter holds ----------------------------


class Context:
    """What the cases act on; `replicate` and `connect` fill in everything but the argument under test."""

    def __init__(self, lab: LabInfo, conn: Any, control: LabControl, vm: str, fresh: str, tmp: Path) -> None:
        self.lab, self.conn, self.control, self.vm, self.fresh, self.tmp = lab, conn, control, vm, fresh, tmp
        self.access = MountedDatastores(lab.datastores)

    def replicate(self, *vm: Any, **options: Any) -> object:
        """replicate(conn, the protected VM, replica_access=...), with `vm` or `options` replaced."""
        options.setdefault("replica_access", self.access)
        return replicate(self.conn, *(vm or (self.vm,)), **options)

    def connect(self, **options: Any) -> object:
        given = {"host": self.lab.host, "port": self.lab.port, **options}
        return connect(
            given["host"],
            self.lab.user,
            self.lab.password,
            port=given["port"],
            ca_file=self.lab.ca_file,
            retry=RetryPolicy(sleep=no_sleep),
        )

    def fill(self, text: str) -> str:
        return text.format(vm=self.vm, fresh=self.fresh, tmp=self.tmp, lab=self.lab.state_dir)

    def unfill(self, text: str) -> str:
        """The placeholders back in an observed message, for the documented table."""
        for value, name in (
            (str(self.tmp), "{tmp}"),
            (self.lab.state_dir, "{lab}"),
            (f"{self.vm}-replica", "{vm}-replica"),
            (self.fresh, "{fresh}"),
            (self.vm, "{vm}"),
        ):
            text = text.replace(value, name)
        return text


def write_policy_files(tmp: Path, vm: str) -> None:
    """The files the `run` cases are given; each has exactly one thing wrong."""
    head = "version: 1\nprotections:\n"
    good = (
        f"  - name: x\n    select: {{names: [{vm}]}}\n    target: {{datastore: secondary-ds}}\n"
        "    policy: point-in-time\n    settings: {interval: 1h}\n"
    )
    (tmp / "policy.yaml").write_text(head + good)
    (tmp / "deep.yaml").write_text("version: 1\nprotections: " + "[" * 5000 + "]" * 5000 + "\n")
    laughs = ["version: 1", "protections:", "  - name: x", "    select: {names: [a]}"]
    laughs += ["    target: {datastore: secondary-ds}", "    policy: point-in-time", "    settings:"]
    laughs.append("      l0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]")
    laughs += [f"      l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    laughs.append("      interval: *a9")
    (tmp / "laughs.yaml").write_text("\n".join(laughs) + "\n")
    (tmp / "big.yaml").write_text(head + "#" * (2 << 20) + "\n")
    (tmp / "latin1.yaml").write_bytes((head + good.replace("name: x", "name: caf\xe9")).encode("latin-1"))
    (tmp / "huge-int.yaml").write_text(
        head + good.replace("interval: 1h", "interval: 1h, keep: " + "9" * 5000)
    )
    (tmp / "empty.bin").write_bytes(b"")


def vcenter_state(si: Any) -> dict[str, tuple[Any, ...]]:
    """Every VM by name: its snapshot tree, our extraConfig keys and values, CBT on or off. One read."""
    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        pc.TraversalSpec(name="v", path="view", skip=False, type=vim.view.ContainerView)
                    ],
                )
            ],
            propSet=[
                pc.PropertySpec(
                    type=vim.VirtualMachine,
                    pathSet=["name", "snapshot", "config.extraConfig", "config.changeTrackingEnabled"],
                )
            ],
        )
        found = content.propertyCollector.RetrieveContents([spec])
    finally:
        view.DestroyView()
    state: dict[str, tuple[Any, ...]] = {}
    for obj in found:
        props = {p.name: p.val for p in obj.propSet}
        snapshots: list[tuple[str, str]] = []
        stack = list(props["snapshot"].rootSnapshotList) if props.get("snapshot") else []
        while stack:
            node = stack.pop()
            snapshots.append((node.snapshot._moId, node.name))
            stack.extend(node.childSnapshotList)
        options = sorted(
            (o.key, str(o.value)) for o in props.get("config.extraConfig", []) if o.key.startswith(OURS)
        )
        state[props["name"]] = (
            tuple(sorted(snapshots)),
            tuple(options),
            props.get("config.changeTrackingEnabled"),
        )
    return state


def disk_files(lab: LabInfo, si: Any, name: str) -> list[tuple[str, int, int]]:
    """The VM's current disk files with their size and modification time: a guest write changes them."""
    files = [labutil.local_extent(lab, d.backing.fileName) for d in labutil.disks(labutil.find_vm(si, name))]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


# What a read costs vCenter nothing: a case may log in and look, but must not call anything else.
READ_ONLY = {
    "Login",
    "Logout",
    "RetrieveServiceContent",
    "RetrieveContents",
    "RetrieveProperties",
    "RetrievePropertiesEx",
    "ContinueRetrievePropertiesEx",
    "CreateContainerView",
    "DestroyView",
    "CurrentTime",
}
# Taking a lease and giving it back: a reconfigure each way, awaited through the property collector.
LEASE = {
    "ReconfigVM_Task",
    "CreatePropertyCollector",
    "CreateFilter",
    "DestroyPropertyFilter",
    "WaitForUpdatesEx",
    "DestroyPropertyCollector",
}


def snapshot_of_everything(ctx: Context, si: Any) -> dict[str, Any]:
    return {
        "vcenter": vcenter_state(si),
        "disks": disk_files(ctx.lab, si, ctx.fresh),
        "faults": ctx.control.faults(),
        "new lab": (ctx.tmp / "lab" / "lab.json").exists(),
    }


@pytest.fixture(scope="module")
def ctx(lab: LabInfo, control: LabControl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    vm, fresh = _fresh_vm(), _fresh_vm()
    tmp = tmp_path_factory.mktemp("bad-input")
    write_policy_files(tmp, fresh)
    with connect(
        lab.host,
        lab.user,
        lab.password,
        port=lab.port,
        ca_file=lab.ca_file,
        retry=RetryPolicy(sleep=no_sleep),
    ) as conn:
        access = MountedDatastores(lab.datastores)
        protect(conn, vm, ReplicaTarget(datastore="secondary-ds"), replica_access=access)
        control.write_random(vm, offset=1 << 20, length=300_000, seed=7)  # a cycle would have work to do
        yield Context(lab, conn, control, vm, fresh, tmp)
    table = os.environ.get("VR_BAD_INPUT_TABLE")
    if table:
        Path(table).write_text(
            "| input | exit code / exception | message |\n| --- | --- | --- |\n" + "".join(_rows),
            encoding="utf-8",
        )


@pytest.fixture(scope="module")
def before(ctx: Context, _shared_si: Any) -> dict[str, Any]:
    """vCenter as the cases found it: each must leave it exactly so."""
    return snapshot_of_everything(ctx, logged_in(ctx.lab, _shared_si))  # an earlier test may have expired it


_rows: list[str] = []


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _record(shown: str, outcome: str, message: str, note: str = "") -> None:
    _rows.append(f"| {_cell(shown)}{note} | {outcome} | {_cell(message)} |\n")


def _argv_text(case: Cli) -> str:
    """The command as a user would type it; a very long word shortened, placeholders left bare."""
    words = [w if len(w) <= 40 else f"{w[:12]}…({len(w)} characters)" for w in case.argv]
    shown = [w if re.fullmatch(r"[\w{}/.=:,+-]+", w) else shlex.quote(w) for w in words]
    env = [f"{k}={v}" for k, v in case.env]
    return " ".join([*env, "vsphere-replicator", *shown])


def _case_id(case: Cli | Call) -> str:
    if isinstance(case, Call):
        return case.text
    return " ".join([*(f"{k}={v}" for k, v in case.env), *case.argv])[:60]


@pytest.mark.parametrize("case", CLI_CASES, ids=_case_id)
def test_the_cli_refuses_bad_input_in_one_line_and_changes_nothing(
    case: Cli, ctx: Context, si: Any, before: dict[str, Any]
) -> None:
    argv = [ctx.fill(word) for word in case.argv]
    env = {**cli_env(ctx.lab), **dict(case.env)}
    ctx.control.reset_stats()
    done = subprocess.run(
        [sys.executable, "-m", "vsphere_replicator.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, done.stderr
    assert case.message in lines[0]
    assert done.returncode == case.code, done.stderr
    assert done.stdout == ""
    assert set(ctx.control.stats()["methods"]) <= READ_ONLY | (LEASE if case.lease else set())
    assert snapshot_of_everything(ctx, si) == before
    note = " (takes and gives back the lease first)" if case.lease else ""
    _record(_argv_text(case), str(done.returncode), ctx.unfill(lines[0]), note)


@pytest.mark.parametrize("case", CALLS, ids=_case_id)
def test_the_library_raises_one_of_its_errors_and_changes_nothing(
    case: Call, ctx: Context, si: Any, before: dict[str, Any]
) -> None:
    ctx.control.reset_stats()
    with pytest.raises(ReplicatorError) as raised:
        case.call(ctx)
    assert set(ctx.control.stats()["methods"]) <= READ_ONLY
    error = raised.value
    assert isinstance(error, case.error), repr(error)
    assert case.message in str(error)
    assert "\n" not in str(error)
    assert snapshot_of_everything(ctx, si) == before
    _record(case.text, type(error).__name__, ctx.unfill(str(error)))
