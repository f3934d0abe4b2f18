"""The lab: a vCenter simulator with real disks, CBT and faults (see docs/lab.md)."""

from importlib import resources
from pathlib import Path

from vsphere_replicator.errors import LabError
from vsphere_replicator.lab.build import ensure_lab_binary
from vsphere_replicator.lab.control import LabControl
from vsphere_replicator.lab.process import LabInfo, lab_status, running_lab, start_lab, stop_lab


def vddk_standin() -> Path:
    """The lab's stand-in for nbdkit's VDDK plugin: `nbdkit python <this path> server=… vm=moref=…`."""
    return Path(str(resources.files("vsphere_replicator.lab") / "vddk_standin.py"))


__all__ = [
    "LabControl",
    "LabError",
    "LabInfo",
    "ensure_lab_binary",
    "lab_status",
    "running_lab",
    "start_lab",
    "stop_lab",
    "vddk_standin",
]
