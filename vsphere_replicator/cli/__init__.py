"""Command-line front end: `vsphere-replicator` (also `python -m vsphere_replicator.cli`).

Whatever it is given, it ends with an exit code from EXIT_CODES and, on
failure, one `error: …` line on stderr — never a traceback. With `--json`
a failure also prints one JSON object on stdout:
`{"error": "…", "exit_code": N, "kind": "<exception class>"}`.

The package: `exits` (the exit-code table and which error ends with which
code), `options` (options shared by several commands, and validated
types), `profiles` (which vCenter, which mounts), `output` (formatters,
JSON, progress bars), `lab` and `replication` (the commands).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from vsphere_replicator.cli import lab, replication
from vsphere_replicator.cli.exits import (
    EXIT_BUSY,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_RPO_MISSED,
    EXIT_USAGE,
    Failure,
    UsageError,
    classify,
)
from vsphere_replicator.cli.options import Parser, TableHelpFormatter
from vsphere_replicator.cli.output import error_document, print_json
from vsphere_replicator.logs import configure_logging

__all__ = [
    "EXIT_BUSY",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_RPO_MISSED",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]


def _epilog() -> str:
    lines = ["exit codes:"]
    lines += [f"  {code:<3} {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; parse errors raise UsageError, --help exits 0 (SystemExit)."""
    parser = Parser(
        prog="vsphere-replicator",
        description="Replicate VMware VMs to a secondary site through vCenter.",
        epilog=_epilog(),
        formatter_class=TableHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lab.add_commands(commands)
    replication.add_commands(commands)
    return parser


def _wants_json(argv: Sequence[str]) -> bool:
    """--json among the options (not after `--`): a usage error is then JSON too."""
    words = list(argv)
    return "--json" in (words[: words.index("--")] if "--" in words else words)


def _report(failure: Failure, as_json: bool) -> int:
    if as_json:
        print_json(error_document(failure))
    print(f"{failure.prefix}: {failure.message}" if failure.prefix else failure.message, file=sys.stderr)
    return failure.code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (EXIT_CODES says what each means)."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(words)
    except UsageError as exc:
        return _report(classify(exc), _wants_json(words))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Warnings (a disk resynced, a cycle resumed, an orphan removed) on stderr, readable; info with -v.
    configure_logging(json=os.environ.get("VSPHERE_REPLICATOR_LOG") == "json", level=logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (Exception, KeyboardInterrupt) as exc:  # every failure: one line, never a traceback
        return _report(classify(exc), bool(getattr(args, "json", False)))
