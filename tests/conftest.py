"""Fixtures: one lab per test session, one VM per test that changes state."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import structlog
from pyVmomi import vim

from tests import labutil
from vsphere_replicator.connection import Connection, RetryPolicy, connect
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, vddk_standin
from vsphere_replicator.replication import VDDKDisks
from vsphere_replicator.transport import NBDEndpoint

LAB_VMS = 320
DISK_SIZE = 32 << 20
CBT_WINDOW = 4 << 20
CBT_BLOCK = 64 << 10


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """A test that configured logging (the CLI's main() does) leaves nothing to the next one."""
    yield
    structlog.reset_defaults()


# The shared lab is ESXi-like, as every lab: snapshot layers are redo logs and a running VM's disks
# are locked. A replica's current layer is a redo log from its first restore point on, so cycles
# write replicas through VDDK (the lab's stand-in), the only way into one: `vddk` / `lab_vddk`.


@pytest.fixture(scope="session")
def lab() -> Iterator[LabInfo]:
    with running_lab(
        vms=LAB_VMS,
        disks_per_vm=2,
        disk_size=DISK_SIZE,
        cbt_window=CBT_WINDOW,
        cbt_block=CBT_BLOCK,
    ) as info:
        yield info


@pytest.fixture(scope="session")
def control(lab: LabInfo) -> LabControl:
    return LabControl(lab)


@pytest.fixture(scope="session")
def _shared_si(lab: LabInfo) -> Iterator[Any]:
    connection = labutil.connect(lab)
    yield connection
    labutil.disconnect(connection)


def logged_in(lab: LabInfo, connection: Any) -> Any:
    """`connection`, logged in again if a test expired every session (lab fault expire-sessions)."""
    try:
        connection.content.sessionManager.currentSession  # noqa: B018 - a cheap liveness probe
    except vim.fault.NotAuthenticated:
        connection.content.sessionManager.Login(lab.user, lab.password)
    return connection


@pytest.fixture
def si(lab: LabInfo, _shared_si: Any) -> Any:
    """A plain pyVmomi session, logged in again if a test expired it."""
    return logged_in(lab, _shared_si)


_names = (f"lab-vm-{i:04d}" for i in itertools.count(1))


def _fresh_vm() -> str:
    name = next(_names)
    if int(name[-4:]) > LAB_VMS:
        pytest.fail("the lab ran out of fresh VMs; raise LAB_VMS in conftest.py")
    return name


@pytest.fixture
def vm_name() -> str:
    """A VM no other test has touched."""
    return _fresh_vm()


@pytest.fixture
def fresh_vm() -> Callable[[], str]:
    """Call for each further VM no other test has touched."""
    return _fresh_vm


@pytest.fixture
def vm(si: Any, vm_name: str) -> Any:
    return labutil.find_vm(si, vm_name)


def powered_off(si: Any, name: str) -> str:
    """Power `name` off (plain pyVmomi): vCenter's `/folder` serves a VM's current layer only then."""
    found = labutil.find_vm(si, name)
    if found.runtime.powerState != "poweredOff":
        labutil.wait(found.PowerOffVM_Task())
    return name


@pytest.fixture
def off_vm_name(si: Any, vm_name: str) -> str:
    """A VM no other test has touched, powered off, for tests that read its current layer over `/folder`."""
    return powered_off(si, vm_name)


@pytest.fixture
def off_vm(si: Any, off_vm_name: str) -> Any:
    return labutil.find_vm(si, off_vm_name)


def lab_connection(lab: LabInfo) -> Connection:
    """A library connection to the lab, with retries that do not sleep (use it in a `with`)."""
    return connect(
        lab.host,
        lab.user,
        lab.password,
        port=lab.port,
        ca_file=lab.ca_file,
        retry=RetryPolicy(sleep=lambda _: None),
    )


@pytest.fixture
def conn(lab: LabInfo) -> Iterator[Connection]:
    """A library connection to the lab, with retries that do not sleep."""
    with lab_connection(lab) as connection:
        yield connection


def lab_vddk(conn: Connection) -> VDDKDisks:
    """Disks through VDDK, played by the lab's stand-in: how cycles write a replica's redo log."""
    return VDDKDisks(conn, plugin=str(vddk_standin()))


@pytest.fixture
def vddk(conn: Connection) -> VDDKDisks:
    return lab_vddk(conn)


# -- NBD servers (Debian's qemu-nbd and nbdkit) over lab disk files ----------------

SERVERS = ["qemu-nbd", "nbdkit"]


def _listening(sock: Path) -> bool:
    """The socket file appears at bind(), a moment before the server accepts: try connecting."""
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(sock))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def serve(
    server: str, image: Path, sock: Path, *, read_only: bool, fmt: str = "raw"
) -> subprocess.Popen[bytes]:
    """`fmt` vmdk (qemu-nbd only) serves a disk layer through its descriptor and chain, redo logs too."""
    if server == "qemu-nbd":
        args = [
            "qemu-nbd",
            "-f",
            fmt,
            "-k",
            str(sock),
            "-t",
            "-e",
            "8",
            *(["-r"] if read_only else []),
            str(image),
        ]
    else:
        assert fmt == "raw", "nbdkit's file plugin serves raw images only"
        args = ["nbdkit", "-f", "-U", str(sock), *(["-r"] if read_only else []), "file", f"file={image}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not _listening(sock):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"{server} did not start: {process.stderr.read().decode() if process.stderr else ''}"
            )
        time.sleep(0.05)
    return process


class StartNBD(Protocol):
    """Serve an image over NBD (a Unix socket) until the test ends."""

    def __call__(self, image: Path, *, read_only: bool = True) -> NBDEndpoint: ...


@pytest.fixture(params=SERVERS)
def nbd_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartNBD]:
    if shutil.which(request.param) is None:
        pytest.fail(f"{request.param} is not installed: scripts/setup.sh installs it")
    started: list[subprocess.Popen[bytes]] = []

    def start(image: Path, *, read_only: bool = True) -> NBDEndpoint:
        sock = tmp_path / f"nbd-{len(started)}.sock"
        started.append(serve(request.param, image, sock, read_only=read_only))
        return NBDEndpoint(socket_path=str(sock))

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


# Tests that use any of these need a running lab (a vcsim process): they get the `lab` marker,
# so `pytest -m "not lab"` is the quick loop of everything that runs without one.
LAB_FIXTURES = frozenset(
    {"lab", "control", "si", "_shared_si", "conn", "vm", "world", "slab", "ssi", "sconn", "scontrol", "ctx"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & LAB_FIXTURES or item.get_closest_marker("reliability"):
            item.add_marker(pytest.mark.lab)
