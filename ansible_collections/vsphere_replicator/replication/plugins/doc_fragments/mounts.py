# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""How the modules that read or write disks reach them: transport, mounts, vddk_* (module_utils.common)."""

from __future__ import annotations


class ModuleDocFragment:
    # Matches mounts_argument_spec() in plugins/module_utils/common.py.
    DOCUMENTATION = r"""
options:
  mounts:
    description:
      - Where each datastore that replica disks are written to (or read from) is mounted on the managed
        node, as a mapping of datastore name to directory.
      - Each mount is proven to be that datastore before anything is written through it.
      - Modules that read and write no disks ignore it, so that C(module_defaults) can set it once for the
        whole action group.
      - If not given, the environment variable E(VSPHERE_REPLICATOR_MOUNTS) is used
        (C(DATASTORE=DIR,DATASTORE=DIR)).
    type: dict
  transport:
    description:
      - How disks are read and written. C(mount) writes replica disks through O(mounts) and reads source
        disks over vCenter's datastore HTTP endpoint; it serves datastores with flat files only (a restore
        point on ESXi makes the replica's current layer a redo log, which no mount can write).
      - C(vddk) reaches every disk through VMware's VDDK, one C(nbdkit vddk) per disk on the managed node,
        reading snapshots read-only; no datastore is mounted.
      - If not given, the environment variable E(VSPHERE_REPLICATOR_TRANSPORT) is used, else C(mount).
    type: str
    choices: [mount, vddk]
  vddk_libdir:
    description:
      - VDDK's directory (vmware-vix-disklib-distrib) on the managed node, for O(transport=vddk).
      - If not given, the environment variable E(VSPHERE_REPLICATOR_VDDK_LIBDIR) is used.
    type: path
  vddk_plugin:
    description:
      - nbdkit's plugin for O(transport=vddk), a name or a path (a C(.py) path runs through nbdkit's python
        plugin, as the lab's VDDK stand-in does).
      - If not given, the environment variable E(VSPHERE_REPLICATOR_VDDK_PLUGIN) is used, else C(vddk).
    type: str
"""
