"""The VDDK-against-nbdcopy benchmark still runs end to end, on a small disk and two rounds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The benchmark starts a lab of its own.
pytestmark = pytest.mark.lab

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "delta.py"


def test_a_small_vddk_run_copies_the_same_bytes_as_nbdcopy_and_reports_the_ratio() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--vddk",
            "--disk-size",
            "64MiB",
            "--fractions",
            "0.1",
            "--rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=180,  # a hung run fails here; a normal one takes about 10 s
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "median ratio of library/nbdcopy throughput" in run.stdout
    assert "copies: identical to the snapshot" in run.stdout
    row = next(line for line in run.stdout.splitlines() if line.strip().startswith("10.00 |"))
    cells = [cell.strip() for cell in row.split("|")]
    assert float(cells[3]) > 0  # a measured ratio
    assert float(cells[4]) == 1.0  # 256 KiB extents, aligned: the library moves exactly what changed
    assert cells[5] == "yes"
