"""vsphere_replicator: replicate VMware VMs to a secondary site through vCenter."""

from vsphere_replicator.errors import LabError, ReplicatorError

__version__ = "0.1.0"

__all__ = ["LabError", "ReplicatorError", "__version__"]
