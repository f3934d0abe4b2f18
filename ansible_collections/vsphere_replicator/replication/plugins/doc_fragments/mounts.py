# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""`mounts`: where the modules that write replica disks find the datastores (module_utils.common)."""

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
"""
