# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The options every module of the collection takes to reach vCenter (module_utils.common)."""

from __future__ import annotations


class ModuleDocFragment:
    # Matches connection_argument_spec() in plugins/module_utils/common.py.
    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - The vCenter to connect to (name or address).
      - If not given, the environment variable E(VSPHERE_HOST) is used.
    type: str
  port:
    description:
      - The port of vCenter's API.
      - If not given, the environment variable E(VSPHERE_PORT) is used, else 443.
    type: int
  username:
    description:
      - The user to log in as.
      - If not given, the environment variable E(VSPHERE_USER) is used.
    type: str
    aliases: [user]
  password:
    description:
      - The user's password. It is never shown in results, warnings or errors (C(no_log)).
      - If not given, the environment variable E(VSPHERE_PASSWORD) is used.
    type: str
    aliases: [pass, pwd]
  ca_file:
    description:
      - A PEM file of the certificate authorities to trust for vCenter's TLS certificate.
      - If not given, the environment variable E(VSPHERE_CA_FILE) is used; without it and without
        O(thumbprint), the system's certificate authorities are trusted.
    type: path
  thumbprint:
    description:
      - The SHA-256 digest of vCenter's certificate (64 hex digits, colons allowed), trusted alone.
      - If not given, the environment variable E(VSPHERE_THUMBPRINT) is used.
    type: str
notes:
  - The modules run the installed C(vsphere_replicator) library (vsphere-replicator 0.1.0 or later) on the
    managed node, usually C(localhost); set C(ansible_python_interpreter) to the Python it is installed in.
  - Set the connection options once for every module of the collection with
    C(module_defaults) and the action group C(group/vsphere_replicator.replication.vsphere_replicator).
requirements:
  - python >= 3.11
  - vsphere-replicator >= 0.1.0
"""
