"""The lab: a vCenter simulator with real disks, CBT and faults (see docs/lab.md)."""

from vsphere_replicator.errors import LabError
from vsphere_replicator.lab.build import ensure_lab_binary
from vsphere_replicator.lab.control import LabControl
from vsphere_replicator.lab.process import LabInfo, lab_status, running_lab, start_lab, stop_lab

__all__ = [
    "LabControl",
    "LabError",
    "LabInfo",
    "ensure_lab_binary",
    "lab_status",
    "running_lab",
    "start_lab",
    "stop_lab",
]
