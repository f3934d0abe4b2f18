"""The command line without a lab: exit codes, JSON errors, --help defaults, shared options, progress."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import vsphere_replicator.cli as cli
from vsphere_replicator.cli import EXIT_CODES, build_parser, main
from vsphere_replicator.cli.exits import UsageError, classify
from vsphere_replicator.cli.output import Progress, progress
from vsphere_replicator.errors import ArgumentRejected, InvalidInput, NotFound, ReplicatorError, VSphereFault
from vsphere_replicator.inventory import PROVISIONING
from vsphere_replicator.lab.control import DROP_PATHS
from vsphere_replicator.policies import PolicyFileError
from vsphere_replicator.replication import IncrementalRefused, StateError
from vsphere_replicator.replication.lease import Busy, LeaseHolder
from vsphere_replicator.replication.settings import QUIESCE_MODES
from vsphere_replicator.replication.status import FAILED_OVER, UNREADABLE, ProtectionStatus


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda **_: None)


@pytest.fixture
def no_vcenter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No VSPHERE_* variables and no lab where the commands would look for one."""
    for name in list(os.environ):
        if name.startswith(("VSPHERE_", "VR_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VR_LAB_STATE_DIR", str(tmp_path / "no-lab"))


def _busy() -> Busy:
    now = datetime.now(UTC)
    holder = LeaseHolder(
        token="t", operation="replicate", host="h", pid=1, process=None, started=now, expires=now
    )
    return Busy("vm-replica is busy", holder=holder)


# -- exit codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("bad value"), 2),
        (UsageError("argument --chunk: not a size"), 2),
        (PolicyFileError([]), 2),
        (ArgumentRejected("CreateSnapshot_Task: InvalidArgument", fault="InvalidArgument"), 1),
        (StateError("a planned failover of vm is in progress"), 1),
        (VSphereFault("the task failed", fault="FileFault"), 1),
        (NotFound("no VM matches"), 1),
        (ReplicatorError("anything else"), 1),
        (OSError(28, "No space left on device"), 1),
        (IncrementalRefused("too much changed"), 4),
        (_busy(), 5),
        (RuntimeError("a bug"), 70),
        (KeyboardInterrupt(), 130),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_each_error_ends_with_its_exit_code_and_only_bad_input_with_2(
    error: BaseException, code: int
) -> None:
    """A fault vCenter answered, a stuck state and a held lease are never the usage code."""
    assert classify(error).code == code
    assert code in EXIT_CODES


def test_a_failure_with_json_is_one_json_object_on_stdout_and_one_line_on_stderr(
    no_vcenter: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--json"]) == 2
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document == {"error": document["error"], "exit_code": 2, "kind": "InvalidInput"}
    assert document["error"].startswith("no vCenter given")
    assert err == f"error: {document['error']}\n"


def test_a_failure_without_json_prints_nothing_on_stdout(
    no_vcenter: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no vCenter given")


def test_a_usage_error_with_json_is_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replicate", "vm", "--chunk", "96K", "--json"]) == 2
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["kind"] == "UsageError" and document["exit_code"] == 2
    assert "argument --chunk: must be from 64K to 64M in steps of 64K, not '96K'" in document["error"]
    assert err.count("\n") == 1 and err.startswith("error: argument --chunk")


def test_a_lab_error_with_json_on_a_command_without_json_stays_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lab commands print JSON results already and take no --json: their errors stay one line."""
    assert main(["lab", "env", "--state-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "error: no lab is running (start one with: vsphere-replicator lab up)\n"


def test_json_after_a_double_dash_is_not_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replicate", "--chunk", "1", "--", "--json"]) == 2
    assert capsys.readouterr().out == ""


# -- status: stuck beats a missed RPO ------------------------------------------------------------


def _status(**changes: Any) -> ProtectionStatus:
    values: dict[str, Any] = {
        "vm": "vm",
        "replica": "vm-replica",
        "state": "protected",
        "restore_points": 1,
        "latest_point": "rp-000001",
        "latest_created": datetime.now(UTC),
        "age_seconds": 5.0,
        "target_rpo_seconds": 60.0,
        "compliant": True,
        "last_bytes_moved": 0,
        "last_bytes_changed": 0,
        "last_error": None,
    }
    values.update(changes)
    return ProtectionStatus(**values)


@contextmanager
def _fake_session(args: argparse.Namespace) -> Iterator[Any]:
    yield argparse.Namespace(conn=None, env={})


@pytest.mark.parametrize(
    ("rows", "code"),
    [
        ([], 0),
        ([_status()], 0),
        ([_status(compliant=None, target_rpo_seconds=None)], 0),
        ([_status(state=FAILED_OVER, compliant=None)], 0),
        ([_status(compliant=False)], 3),
        ([_status(last_error="TaskFailed: the snapshot failed")], 1),
        ([_status(state=UNREADABLE, last_error="not valid JSON")], 1),
        ([_status(state="failover in flight", operation="planned failover: source-off")], 1),
        ([_status(state=FAILED_OVER, operation="failback: switching")], 1),
        ([_status(compliant=False), _status(vm="b", last_error="FileFault: locked")], 1),
    ],
    ids=[
        "none",
        "protected",
        "no-rpo",
        "failed-over",
        "rpo-missed",
        "last-error",
        "unreadable",
        "failover-in-flight",
        "failback-in-flight",
        "stuck-beats-rpo",
    ],
)
def test_status_exits_1_while_a_vm_is_stuck_and_3_only_for_a_missed_rpo(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rows: list[ProtectionStatus],
    code: int,
) -> None:
    monkeypatch.setattr(cli.replication, "target_session", _fake_session)
    monkeypatch.setattr(cli.replication, "protection_status", lambda conn, target_rpo: tuple(rows))
    assert main(["status", "--json"]) == code
    assert len(json.loads(capsys.readouterr().out)) == len(rows)


def test_status_of_named_vms_judges_only_those(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = (_status(vm="good"), _status(vm="stuck", last_error="FileFault: locked"))
    monkeypatch.setattr(cli.replication, "target_session", _fake_session)
    monkeypatch.setattr(cli.replication, "protection_status", lambda conn, target_rpo: rows)
    assert main(["status", "good"]) == 0
    assert "stuck" not in capsys.readouterr().out
    assert main(["status", "good", "stuck", "nope"]) == 1
    assert capsys.readouterr().err == "error: nope is not protected\n"


# -- options ------------------------------------------------------------------------------------


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _choices(parser: argparse.ArgumentParser, option: str) -> tuple[str, ...]:
    action = next(a for a in parser._actions if option in a.option_strings)
    return tuple(action.choices or ())


def test_option_choices_are_the_librarys_constants() -> None:
    parser = build_parser()
    for command in ("protect", "replicate", "settings"):
        assert _choices(_subparser(parser, command), "--quiesce") == QUIESCE_MODES
    assert _choices(_subparser(parser, "protect"), "--provisioning") == PROVISIONING
    assert _choices(_subparser(parser, "lab", "fault", "drop-connection"), "--path") == DROP_PATHS


@pytest.mark.parametrize("command", ["protect", "replicate", "run", "failover", "failback", "verify"])
def test_the_shared_options_are_declared_once_and_everywhere(command: str) -> None:
    sub = _subparser(build_parser(), command)
    options = [o for a in sub._actions for o in a.option_strings]
    for option in ("--profile", "--json", "--mount"):
        assert options.count(option) == 1, (command, option)


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (
            ["replicate", "--help"],
            ["(default: 4M)", "(default: 256M)", "(default: as recorded)", "hold for this run only"],
        ),
        (["protect", "--help"], ["(default: thin)", "(default: 5)", "(default: never)", "{vm}-replica"]),
        (["lab", "up", "--help"], ["(default: 4)", "(default: 64M)", "(default: 2)"]),
        (["snapshots", "--help"], ["1h for sweep"]),
        (["lab", "fault", "drop-connection", "--help"], ["(default: any)", "(default: 1)"]),
    ],
)
def test_help_shows_defaults(argv: list[str], shown: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in shown:
        assert text in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_size_defaults_are_parsed_like_the_typed_value() -> None:
    args = build_parser().parse_args(["replicate", "vm"])
    assert (args.chunk, args.checkpoint_every) == (4 << 20, 256 << 20)


@pytest.mark.parametrize(
    ("argv", "state_dir"),
    [
        (["lab", "fault", "--state-dir", "/a", "list"], "/a"),
        (["lab", "fault", "list", "--state-dir", "/b"], "/b"),
        (["lab", "fault", "--state-dir", "/a", "list", "--state-dir", "/b"], "/b"),
        (["lab", "fault", "list"], None),
        (["lab", "fault", "--state-dir", "/a", "slow-reads", "--delay-ms", "5"], "/a"),
    ],
)
def test_lab_fault_takes_state_dir_before_or_after_its_kind(argv: list[str], state_dir: str | None) -> None:
    args = build_parser().parse_args(argv)
    assert args.state_dir == (Path(state_dir) if state_dir else None)


# -- progress -----------------------------------------------------------------------------------


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_shows_bytes_rate_and_eta_and_keeps_log_lines_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    master, slave = pty.openpty()
    terminal = open(slave, "w", buffering=1)  # noqa: SIM115  # closed below, before reading the master
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress("replicating vm", enabled=True) as bar:
        bar(1 << 20, 8 << 20)
        print("a warning from the library", file=sys.stderr)
        bar(8 << 20, 8 << 20)
    assert sys.stderr is terminal
    terminal.close()
    shown = _read_all(master)
    os.close(master)
    assert "replicating vm" in shown and "8.00M/8.00M" in shown
    assert "B/s" in shown and "<" in shown  # a rate, and the remaining time as elapsed<left
    assert "a warning from the library" in re.split(r"[\r\n]+", shown)  # a line of its own, not in the bar


def test_progress_disabled_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress("replicating vm", enabled=False) as bar:
        bar(1, 2)
        bar.percent(50)
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("tty", "as_json", "shown"), [(True, False, True), (True, True, False), (False, False, False)]
)
def test_a_bar_only_on_a_terminal_and_never_with_json(
    monkeypatch: pytest.MonkeyPatch, tty: bool, as_json: bool, shown: bool
) -> None:
    master, slave = pty.openpty() if tty else os.pipe()
    try:
        monkeypatch.setattr(sys, "stderr", open(slave, "w"))  # noqa: SIM115  # closed with the fds below
        assert cli.replication._progress_shown(argparse.Namespace(json=as_json)) is shown
    finally:
        sys.stderr.close()
        os.close(master)


def test_a_bar_ends_when_its_transfer_does_and_a_new_total_starts_a_new_one() -> None:
    """The end reported twice draws nothing more; a resumed transfer starts its bar where it was."""
    stream = io.StringIO()
    bar = Progress("copying", enabled=True, stream=stream)
    bar(5 << 20, 10 << 20)
    bar(10 << 20, 10 << 20)
    bar(10 << 20, 10 << 20)
    bar(3 << 20, 4 << 20)
    bar.close()
    lines = stream.getvalue().split("\n")
    assert "10.0M/10.0M" in lines[0] and lines[0].count("100%") == 1
    assert lines[1].startswith("\rcopying:  75%") and "10.0M" not in lines[1]
    assert stream.getvalue().count("\n") == 2


def test_a_percentage_bar_shows_time_not_a_rate() -> None:
    stream = io.StringIO()
    bar = Progress("seeding vm (clone)", enabled=True, stream=stream)
    bar.percent(30)
    bar.percent(100)
    shown = stream.getvalue()
    assert "seeding vm (clone):  30%" in shown and "100%" in shown
    assert "/s" not in shown and shown.endswith("]\n")
