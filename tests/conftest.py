"""Fixtures: one lab per test session, one VM per test that changes state."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyVmomi import vim

from tests import labutil
from vsphere_replicator.connection import Connection, RetryPolicy, connect
from vsphere_replicator.lab import LabControl, LabInfo, running_lab

LAB_VMS = 160
DISK_SIZE = 32 << 20
CBT_WINDOW = 4 << 20
CBT_BLOCK = 64 << 10


@pytest.fixture(scope="session")
def lab() -> Iterator[LabInfo]:
    with running_lab(
        vms=LAB_VMS, disks_per_vm=2, disk_size=DISK_SIZE, cbt_window=CBT_WINDOW, cbt_block=CBT_BLOCK
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


@pytest.fixture
def si(lab: LabInfo, _shared_si: Any) -> Any:
    """A plain pyVmomi session, logged in again if a test expired it."""
    try:
        _shared_si.content.sessionManager.currentSession  # noqa: B018 - a cheap liveness probe
    except vim.fault.NotAuthenticated:
        _shared_si.content.sessionManager.Login(lab.user, lab.password)
    return _shared_si


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


@pytest.fixture
def conn(lab: LabInfo) -> Iterator[Connection]:
    """A library connection to the lab, with retries that do not sleep."""
    with connect(
        lab.host,
        lab.user,
        lab.password,
        port=lab.port,
        ca_file=lab.ca_file,
        retry=RetryPolicy(sleep=lambda _: None),
    ) as connection:
        yield connection
