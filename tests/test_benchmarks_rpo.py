"""The RPO benchmark still runs end to end: a few seconds of guest writes under the continuous policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The benchmark starts a lab of its own.
pytestmark = pytest.mark.lab

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "rpo.py"


def test_a_short_rpo_run_exits_cleanly_and_reports_the_rpo_held() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "6", "--disk-size", "64MiB"],
        capture_output=True,
        text=True,
        timeout=120,  # a hung run fails here; a normal one takes about 10 s
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "RPO held (age of the latest restore point" in run.stdout
    assert "RPO compliance:" in run.stdout
    assert "FAILED" not in run.stdout
