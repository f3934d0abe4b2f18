"""nbdkit's environment: no secret, and no virtual environment that would break a Python plugin."""

from __future__ import annotations

import sys
from pathlib import Path

from vsphere_replicator.transport.vddk import _without_secret


def test_nbdkit_gets_no_password_and_no_virtual_environment_on_its_path(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
    environ = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin",
        "VIRTUAL_ENV": str(venv),
        "VSPHERE_PASSWORD": "s3cret",
        "OTHER": "has s3cret inside",
        "HOME": "/root",
    }
    kept = _without_secret(environ, "s3cret")
    assert kept == {"PATH": "/usr/local/bin:/usr/bin", "HOME": "/root"}
