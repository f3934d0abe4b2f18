"""A PEP 517 backend with no dependencies: one module, its metadata and its entry point.

Only what the test needs; the package's pyproject.toml is read for the name,
version and entry points so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULE = "vr_example_policy.py"


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _dist_files(project: dict[str, Any]) -> dict[str, bytes]:
    name = project["name"].replace("-", "_")
    info = f"{name}-{project['version']}.dist-info"
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items()) + "\n"
        for group, points in project.get("entry-points", {}).items()
    )
    return {
        MODULE: (ROOT / MODULE).read_bytes(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
            f"Summary: {project['description']}\n"
        ).encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: vr_example_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{info}/entry_points.txt": entry_points.encode(),
    }


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}\n"


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    project = _project()
    files = _dist_files(project)
    name = project["name"].replace("-", "_")
    record = f"{name}-{project['version']}.dist-info/RECORD"
    filename = f"{name}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / filename, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr(record, "".join(_record_line(p, d) for p, d in files.items()) + f"{record},,\n")
    return filename


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    project = _project()
    base = f"{project['name'].replace('-', '_')}-{project['version']}"
    with tarfile.open(Path(sdist_directory) / f"{base}.tar.gz", "w:gz") as sdist:
        for path in ("pyproject.toml", MODULE, "backend/vr_example_build.py"):
            data = (ROOT / path).read_bytes()
            member = tarfile.TarInfo(f"{base}/{path}")
            member.size = len(data)
            sdist.addfile(member, io.BytesIO(data))
    return f"{base}.tar.gz"
