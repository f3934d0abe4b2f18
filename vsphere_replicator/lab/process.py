"""Start, find and stop lab processes; describe a running lab."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from vsphere_replicator.checks import check_int
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput, LabError
from vsphere_replicator.lab.build import ensure_lab_binary

INFO_FILE = "lab.json"
LOG_FILE = "lab.log"
# What the lab accepts; these mirror validate() in vcsim/main.go, so a bad value is refused
# here, before a process starts. A disk is at most vSphere's largest VMDK, 62 TiB.
MAX_VMS = 10_000
MAX_DISKS_PER_VM = 15
MAX_HOSTS = 64
MIN_DISK_SIZE = 1 << 20
MAX_DISK_SIZE = 62 << 40
MAX_LATENCY_MS = 10_000
MAX_DC_FOLDER_DEPTH = 8
# Datastore kinds (vcsim/datastores.go): vmfs is the default; nfs answers changeId="*" with the
# whole disk; vsan has no disk extents as files (/folder: 404). What "*" may answer per datastore.
DATASTORE_KINDS = ("vmfs", "nfs", "vsan")
STAR_ANSWERS = ("allocated", "whole", "fault")
MAX_EXTRA_DATASTORES = 8
# A site (vcsim/site.go) is another vCenter: its name goes into the lab's inventory names.
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,15}")


def check_site(site: object) -> str | None:
    """`site` as the lab takes it ("B", "recovery"), or None for the default site; InvalidInput otherwise."""
    if site is None or site == "":
        return None
    if not isinstance(site, str) or not _SITE_NAME.fullmatch(site):
        raise InvalidInput(
            f"a site name is 1 to 16 letters, digits or '-', starting with a letter or digit, not {site!r}"
        )
    return site


def site_names(site: str | None) -> dict[str, str]:
    """What the lab of `site` calls its datacenter, datastores, port groups and VMs (vcsim/site.go)."""
    site = check_site(site)
    if site is None:
        return {
            "datacenter": "DC0",
            "primary_datastore": "primary-ds",
            "secondary_datastore": "secondary-ds",
            "vm_network": "VM Network",
            "dr_network": "DR Network",
            "vm_name_prefix": "lab-vm-",
        }
    lower, upper = site.lower(), site.upper()
    return {
        "datacenter": f"DC-{upper}",
        "primary_datastore": f"primary-ds-{lower}",
        "secondary_datastore": f"secondary-ds-{lower}",
        "vm_network": f"VM Network {upper}",
        "dr_network": f"DR Network {upper}",
        "vm_name_prefix": f"lab-{lower}-vm-",
    }


def check_dc_folder(dc_folder: object) -> str | None:
    """`dc_folder` as the lab takes it ("Sites", "Sites/West"), or None; InvalidInput otherwise."""
    if dc_folder is None:
        return None
    if not isinstance(dc_folder, str):
        raise InvalidInput(f"dc_folder must be a folder path such as 'Sites', not {type(dc_folder).__name__}")
    names = dc_folder.split("/")
    if (
        len(names) > MAX_DC_FOLDER_DEPTH
        or any(not n.strip() or len(n) > 80 for n in names)
        or "%2f" in dc_folder.lower()
    ):
        raise InvalidInput(
            f"dc_folder must be up to {MAX_DC_FOLDER_DEPTH} folder names joined by '/', "
            f"none empty or holding %2f: {dc_folder!r}"
        )
    return dc_folder


def check_lab_options(
    *,
    vms: object,
    disks_per_vm: object,
    disk_size: object,
    hosts: object,
    cbt_window: object,
    cbt_block: object,
    latency_ms: object,
) -> None:
    """Raise InvalidInput for options the lab would refuse (or choke on)."""
    check_int(vms, "vms", 0, MAX_VMS)
    check_int(disks_per_vm, "disks_per_vm", 1, MAX_DISKS_PER_VM)
    size = check_int(disk_size, "disk_size", MIN_DISK_SIZE, MAX_DISK_SIZE, unit="bytes")
    if size % 512:
        raise InvalidInput(f"disk_size must be a multiple of 512 bytes, not {size}")
    check_int(hosts, "hosts", 1, MAX_HOSTS)
    check_int(latency_ms, "latency_ms", 0, MAX_LATENCY_MS)
    block = 64 << 10
    if cbt_block is not None:
        block = check_int(cbt_block, "cbt_block", 512, MAX_DISK_SIZE, unit="bytes")
        if block & (block - 1):
            raise InvalidInput(f"cbt_block must be a power of two, not {block}")
    window = 16 << 20  # the lab's defaults: 64 KiB blocks, 16 MiB per answer
    if cbt_window is not None:
        window = check_int(cbt_window, "cbt_window", block, MAX_DISK_SIZE, unit="bytes")
    if window % block:
        raise InvalidInput(f"cbt_window ({window}) must be a multiple of cbt_block ({block})")


def _check_names(values: object, what: str, allowed: tuple[str, ...]) -> dict[str, str]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise InvalidInput(f"{what} must map datastore names to one of {', '.join(allowed)}")
    checked: dict[str, str] = {}
    for name, value in values.items():
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 80
            or name in (".", "..")
            or any(c in name for c in "/[]\\ \t\n%")
        ):
            raise InvalidInput(f"{what}: {name!r} is not a datastore name the lab can create")
        if value not in allowed:
            raise InvalidInput(f"{what}: {value!r} for {name} is not one of {', '.join(allowed)}")
        checked[name] = value
    return checked


def check_datastore_options(
    datastore_kinds: object, star_answers: object, site: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """`datastore_kinds` and `star_answers` as the lab of `site` takes them; InvalidInput otherwise."""
    kinds = _check_names(datastore_kinds, "datastore_kinds", DATASTORE_KINDS)
    if len(kinds) > MAX_EXTRA_DATASTORES:
        raise InvalidInput(f"datastore_kinds names at most {MAX_EXTRA_DATASTORES} datastores")
    star = _check_names(star_answers, "star_answers", STAR_ANSWERS)
    names = site_names(site)
    known = {names["primary_datastore"], names["secondary_datastore"], *kinds}
    for name in star:
        if name not in known:
            raise InvalidInput(f"star_answers: the lab has no datastore {name!r} (add it in datastore_kinds)")
    return kinds, star


@dataclass(frozen=True, slots=True)
class LabInfo(Shown):
    """How to reach a running lab. `password` stays out of repr."""

    url: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    ca_file: str
    datacenter: str
    datastores: Mapping[str, str]
    pid: int
    state_dir: str
    site: str = ""  # "" for the default site, else the name `lab up --site` gave it
    instance_uuid: str = ""  # about.instanceUuid: this vCenter's identity, different in every lab

    @classmethod
    def from_json(cls, text: str) -> LabInfo:
        data: dict[str, Any] = json.loads(text)
        fields = cls.__dataclass_fields__
        optional = {"site", "instance_uuid"}
        return cls(**{name: data[name] for name in fields if name not in optional or name in data})

    def to_json(self) -> str:
        data = asdict(self)
        data["datastores"] = dict(self.datastores)
        return json.dumps(data)


def default_state_dir(site: str | None = None) -> Path:
    """VR_LAB_STATE_DIR (what `lab env` exports), else the per-user state directory.

    A `site`'s lab lives next to it, in `<that directory>-site-<site>`, so that
    the default lab and each site's run side by side.
    """
    site = check_site(site)
    chosen = os.environ.get("VR_LAB_STATE_DIR")
    if chosen:
        base = Path(chosen)
    else:
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
        base = Path(state) / "vsphere_replicator" / "lab"
    if site is None:
        return base
    return base.with_name(f"{base.name}-site-{site}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, PermissionError, FileNotFoundError):
        return False
    return b"vrlab" in cmdline  # a recycled pid is somebody else's process


def lab_status(state_dir: Path | str | None = None, *, site: str | None = None) -> LabInfo | None:
    """The lab running in `state_dir` (default: `site`'s state directory), or None."""
    path = Path(state_dir or default_state_dir(site)) / INFO_FILE
    try:
        info = LabInfo.from_json(path.read_text())
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return info if _alive(info.pid) else None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _private_log(path: Path) -> BinaryIO:
    """`path` truncated for writing, mode 0600 from its creation on (and if it existed before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def start_lab(
    state_dir: Path | str | None = None,
    *,
    vms: int = 4,
    disks_per_vm: int = 1,
    disk_size: int = 64 << 20,
    hosts: int = 2,
    cbt_window: int | None = None,
    cbt_block: int | None = None,
    latency_ms: int = 0,
    dc_folder: str | None = None,
    lock_running_disks: bool = True,
    redo_logs: bool = True,
    datastore_kinds: Mapping[str, str] | None = None,
    star_answers: Mapping[str, str] | None = None,
    site: str | None = None,
    timeout: float = 120.0,
) -> LabInfo:
    """Start a lab in the background and return once it serves.

    `latency_ms` is added to every SOAP call, to see what round trips cost
    against a vCenter that is not on the same machine. `dc_folder` puts the
    datacenter inside that folder path ("Sites": its inventory path, the
    `dcPath` of `/folder` and `LabInfo.datacenter`, becomes "Sites/DC0").
    `lock_running_disks` (the default) makes `/folder` refuse a powered-on
    VM's current disk layer with 500, as vCenter does. `redo_logs` (the
    default) makes each snapshot's layers vmfsSparse redo logs over COWD
    `-delta.vmdk` extents, as ESXi writes them on VMFS: only VDDK (the
    stand-in) reads and writes them, through the chain. Turning either off
    makes the lab easier than ESXi (every layer a flat image that a mount can
    write; a running layer served): docs/lab.md says what that hides.
    `datastore_kinds` gives datastores a kind other than "vmfs" ("nfs",
    "vsan"); a name other than primary-ds and secondary-ds adds a datastore
    ({"vsan-ds": "vsan"}). `star_answers` overrides what
    QueryChangedDiskAreas(changeId="*") answers on a datastore ("allocated",
    "whole", "fault"; by default VMFS answers the allocated areas, NFS and
    vSAN one whole-disk extent).

    `site` ("B") starts another vCenter: the lab's datacenter, cluster,
    hosts, datastores, port groups and VMs are named after it ("DC-B",
    "primary-ds-b", "VM Network B", "lab-b-vm-0001": `site_names`), and
    without `state_dir` it runs in `default_state_dir(site)`. Every lab has
    its own port, certificate, password and `about.instanceUuid`.
    """
    site = check_site(site)
    check_dc_folder(dc_folder)
    kinds, star = check_datastore_options(datastore_kinds, star_answers, site)
    for name, flag in (("lock_running_disks", lock_running_disks), ("redo_logs", redo_logs)):
        if not isinstance(flag, bool):
            raise InvalidInput(f"{name} must be True or False, not {flag!r}")
    check_lab_options(
        vms=vms,
        disks_per_vm=disks_per_vm,
        disk_size=disk_size,
        hosts=hosts,
        cbt_window=cbt_window,
        cbt_block=cbt_block,
        latency_ms=latency_ms,
    )
    directory = Path(state_dir or default_state_dir(site)).resolve()
    running = lab_status(directory)
    if running is not None:
        raise LabError(f"a lab is already running in {directory} (pid {running.pid}, {running.url})")
    binary = ensure_lab_binary()
    # The lab's password (lab.json) and its datastores live here: for this user only.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    (directory / INFO_FILE).unlink(missing_ok=True)
    args = [
        str(binary),
        "-state-dir",
        str(directory),
        "-vms",
        str(vms),
        "-disks-per-vm",
        str(disks_per_vm),
        "-disk-size",
        str(disk_size),
        "-hosts",
        str(hosts),
        "-listen",
        "127.0.0.1:0",
    ]
    if cbt_window is not None:
        args += ["-cbt-window", str(cbt_window)]
    if cbt_block is not None:
        args += ["-cbt-block", str(cbt_block)]
    if latency_ms:
        args += ["-latency", f"{latency_ms}ms"]
    if dc_folder:
        args += ["-dc-folder", dc_folder]
    if lock_running_disks:
        args.append("-lock-running-disks")
    if redo_logs:
        args.append("-redo-logs")
    if site is not None:
        args += ["-site", site]
    for name, kind in sorted(kinds.items()):
        args += ["-datastore-kind", f"{name}={kind}"]
    for name, answer in sorted(star.items()):
        args += ["-star-answer", f"{name}={answer}"]
    log_path = directory / LOG_FILE
    with _private_log(log_path) as log:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = lab_status(directory)
        if info is not None:
            return info
        if process.poll() is not None:
            raise LabError(f"the lab exited with status {process.returncode}:\n{_tail(log_path)}")
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise LabError(f"the lab did not start within {timeout:.0f} s:\n{_tail(log_path)}")


def stop_lab(state_dir: Path | str | None = None, timeout: float = 30.0, *, site: str | None = None) -> bool:
    """Stop the lab in `state_dir` (default: `site`'s state directory); False when none was running."""
    directory = Path(state_dir or default_state_dir(site))
    info = lab_status(directory)
    if info is None:
        (directory / INFO_FILE).unlink(missing_ok=True)
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(info.pid, os.WNOHANG)  # reap it when it was our child
    (directory / INFO_FILE).unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def running_lab(state_dir: Path | str | None = None, **options: Any) -> Iterator[LabInfo]:
    """A lab for the duration of a `with` block, in a temporary directory unless given one.

    `site="B"` (passed on to `start_lab`) makes it another vCenter's lab.
    """
    temporary = state_dir is None
    site = options.get("site")
    prefix = f"vr-lab-site-{check_site(site)}-" if site else "vr-lab-"
    directory = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield start_lab(directory, **options)
    finally:
        stop_lab(directory)
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
