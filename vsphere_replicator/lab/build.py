"""Build the lab's Go program once per source version and cache it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from vsphere_replicator.errors import LabError

SOURCE_DIR = Path(__file__).parent / "vcsim"
GOPATH = Path("/usr/share/gocode")
GOVMOMI = GOPATH / "src/github.com/vmware/govmomi"
DEBIAN_PACKAGES = "golang-go golang-github-vmware-govmomi-dev"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vsphere_replicator"


def go_binary() -> str:
    """Path of the Go toolchain, or a LabError that says what to install."""
    go = shutil.which("go")
    if go is None or not GOVMOMI.is_dir():
        raise LabError(f"building the lab needs Go and govmomi's sources: apt-get install {DEBIAN_PACKAGES}")
    return go


def go_env(*, cgo: bool = False) -> dict[str, str]:
    """The environment the lab's Go sources build in: Debian's GOPATH, no modules.

    ``cgo`` is for ``go test -race``, which needs cgo (and gcc); the lab
    binary itself is built without.
    """
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(cache_dir() / "gocache"),
        "CGO_ENABLED": "1" if cgo else "0",
    }
    env.pop("GOFLAGS", None)
    return env


def source_digest(go: str) -> str:
    """Hash of the Go sources and toolchain: a change to either means a rebuild."""
    digest = hashlib.sha256()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    digest.update(version.encode())
    for path in sorted(SOURCE_DIR.glob("*.go")):
        if path.name.endswith("_test.go"):
            continue  # not part of the binary
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_lab_binary() -> Path:
    """Path of the lab binary for the installed sources, building it if needed."""
    go = go_binary()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"vrlab-{source_digest(go)}"
    if binary.exists():
        return binary
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same version
        if binary.exists():
            return binary
        partial = binary.with_suffix(".partial")
        result = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=SOURCE_DIR,
            env=go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"building the lab failed:\n{result.stderr.strip()}")
        partial.replace(binary)
    return binary
