"""Options shared by several commands, declared once, and the validated types they parse with.

Every numeric option is checked by its type before anything is sent to
vCenter: an out-of-range value is a one-line argparse error (exit 2) that
names the option and the range. Choices and limits come from the library's
own constants, so the command line and the library never disagree.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from vsphere_replicator.checks import check_fraction, shown
from vsphere_replicator.cli.exits import UsageError
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.replication.settings import MAX_KEEP, QUIESCE_MODES, CycleSettings
from vsphere_replicator.units import format_duration, format_size, parse_duration, parse_size


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, when it has one.

    argparse's ArgumentDefaultsHelpFormatter would also print "(default:
    None)" and "(default: False)" for options whose absence means nothing.
    A help that names its default already says "default" itself.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


class TableHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter that prints the epilog as written: the exit-code table of the main --help."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UsageError (one line: the option and the problem), and every
    parser, sub-commands' too, shows option defaults in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


# The main parser's set of sub-commands, where each module registers its own; what a command runs.
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"
Command: TypeAlias = Callable[[argparse.Namespace], int]


# -- types --------------------------------------------------------------------------------------


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


def duration_option(text: str) -> timedelta:
    """'90s', '15m', '1h30m', '7d': the durations a policy file takes, so the two never disagree."""
    try:
        return parse_duration(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def datetime_option(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is this machine's local time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO time such as 2026-11-26T09:30, not {text[:40]!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def age_option(text: str) -> timedelta:
    """A duration that may also be zero ("0s": any age), for --older-than."""
    if text.strip() in ("0", "0s", "0m", "0h", "0d"):
        return timedelta(0)
    return duration_option(text)


def network_pair(text: str) -> tuple[str, str]:
    """SOURCE_PORT_GROUP=RECOVERY_PORT_GROUP, for --network.

    An InvalidInput, not an argparse error, so the message names the whole
    flag as the library's own checks do.
    """
    source, eq, target = text.partition("=")
    if not eq or not source or not target:
        raise InvalidInput(f"--network is SOURCE_PORT_GROUP=RECOVERY_PORT_GROUP, not {text!r}")
    return source, target


# -- options ------------------------------------------------------------------------------------


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """--profile and --json: every command that talks to vCenter takes them."""
    parser.add_argument(
        "--profile", default=None, metavar="NAME", help="read VSPHERE_<NAME>_* instead of VSPHERE_*"
    )
    parser.add_argument(
        "--source-profile",
        default=None,
        metavar="NAME",
        help="the protected VMs' vCenter (default: the source profile when VSPHERE_SOURCE_HOST is set, "
        "else --profile)",
    )
    parser.add_argument(
        "--target-profile",
        default=None,
        metavar="NAME",
        help="the replicas' vCenter, at the recovery site (default: the target profile when "
        "VSPHERE_TARGET_HOST is set, else the source's)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON for machines (errors too: one object on stdout)"
    )


TRANSPORTS = ("mount", "vddk")


def add_mount_option(parser: argparse.ArgumentParser) -> None:
    """--mount: where a datastore the command writes (or reads) disks on is mounted here;
    --transport vddk (with --vddk-libdir, --vddk-plugin) instead reaches disks through VDDK."""
    parser.add_argument(
        "--mount",
        action="append",
        default=None,
        metavar="DATASTORE=DIR",
        help="where a datastore is mounted here (repeatable; adds to VSPHERE_REPLICATOR_MOUNTS)",
    )
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="how disks are read and written: through mounted datastores (mount), or through VMware's "
        "VDDK, one nbdkit vddk per disk (vddk: no --mount needed). Default: "
        "$VSPHERE_REPLICATOR_TRANSPORT, else mount; the lab's environment says vddk",
    )
    parser.add_argument(
        "--vddk-libdir",
        default=None,
        metavar="DIR",
        help="VDDK's directory (vmware-vix-disklib-distrib) for --transport vddk "
        "(default: $VSPHERE_REPLICATOR_VDDK_LIBDIR)",
    )
    parser.add_argument(
        "--vddk-plugin",
        default=None,
        metavar="NAME|PATH",
        help="nbdkit's plugin for --transport vddk: a name or path; a .py path runs through nbdkit's "
        "python plugin (default: $VSPHERE_REPLICATOR_VDDK_PLUGIN, else vddk)",
    )


def add_state_dir_option(parser: argparse.ArgumentParser, *, inner: bool = False) -> None:
    """--state-dir of the lab. `inner` for a sub-command's copy of an option its parent also takes:
    given there it wins, absent it leaves the parent's value alone."""
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS if inner else None,
        metavar="DIR",
        help="lab state directory (default: $VR_LAB_STATE_DIR, else ~/.local/state/vsphere_replicator/lab)",
    )


# The cycle settings each command line option sets, by CycleSettings field.
_CYCLE_FIELDS = {
    "keep": "keep",
    "max_age": "max_age",
    "quiesce": "quiesce",
    "max_change_share": "max_change_share",
    "verify": "verify",
    "rpo": "target_rpo",
}


def _default_text(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return format_duration(value) if isinstance(value, timedelta) else str(value)


def add_cycle_options(parser: argparse.ArgumentParser, *, when_absent: str | None = None) -> None:
    """The cycle settings a command may set: protect records them, replicate uses them for one run,
    settings changes the recorded ones.

    `when_absent` says in --help what an option not given means ("as recorded", "unchanged");
    None shows the library's defaults (CycleSettings()), which protect records.
    """
    library = CycleSettings()

    def default(field: str) -> str:
        return f"(default: {when_absent or _default_text(getattr(library, field))})"

    parser.add_argument(
        "--keep",
        type=int_option(1, MAX_KEEP),
        default=None,
        metavar="N",
        help=f"restore points to keep, 1-{MAX_KEEP} {default('keep')}",
    )
    parser.add_argument(
        "--max-age",
        type=duration_option,
        default=None,
        metavar="DURATION",
        help=f"drop restore points older than this (90s, 15m, 1h30m, 7d) {default('max_age')}",
    )
    parser.add_argument(
        "--quiesce",
        choices=QUIESCE_MODES,
        default=None,
        help=f"quiesce the guest through VMware Tools; try falls back to crash-consistent "
        f"{default('quiesce')}",
    )
    parser.add_argument(
        "--max-change-share",
        type=fraction_option,
        default=None,
        metavar="SHARE",
        help="refuse an incremental that would move more than this share (0-1) of a disk "
        f"{default('max_change_share')}",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help=f"compare every restore point with its source and digest it {default('verify')}",
    )
    parser.add_argument(
        "--rpo",
        type=duration_option,
        default=None,
        metavar="DURATION",
        help=f"target RPO that status judges against {default('target_rpo')}",
    )


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The cycle settings named on the command line, and only those, by CycleSettings field."""
    given = {field: getattr(args, option) for option, field in _CYCLE_FIELDS.items()}
    given["verify"] = given["verify"] or None  # a flag: absent is "as recorded", not False
    return {k: v for k, v in given.items() if v is not None}
