"""pytest fixtures for testing against the lab: `vsphere_lab`, `vsphere_lab_control`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vsphere_replicator.lab.control import LabControl
from vsphere_replicator.lab.process import LabInfo, running_lab
from vsphere_replicator.units import parse_size


@pytest.fixture(scope="session")
def vsphere_lab() -> Iterator[LabInfo]:
    """A lab for the test session (VR_LAB_VMS, VR_LAB_DISK_SIZE override its size)."""
    vms = int(os.environ.get("VR_LAB_VMS", "4"))
    disk_size = parse_size(os.environ.get("VR_LAB_DISK_SIZE", "64M"))
    with running_lab(vms=vms, disk_size=disk_size) as info:
        yield info


@pytest.fixture(scope="session")
def vsphere_lab_control(vsphere_lab: LabInfo) -> LabControl:
    return LabControl(vsphere_lab)
