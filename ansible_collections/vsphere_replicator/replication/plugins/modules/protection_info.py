#!/usr/bin/python
# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: protection_info
short_description: Where protected VMs stand against their RPO
description:
  - Lists every protected VM, or the one named O(vm), with its replica, state (C(protected), C(seeding),
    C(failed over), C(cycle in flight), C(failover in flight), C(state unreadable)), its newest restore point
    and that point's age against the target RPO. Changes nothing.
version_added: 0.1.0
author:
  - vsphere_replicator contributors (!UNKNOWN)
options:
  vm:
    description:
      - Only this VM, by name or managed object id (C(vm-42)). A VM that exists but is not protected gives an
        empty list.
    type: str
  target_rpo:
    description: Judge compliance against this RPO (C(15m), C(1h)) instead of the one each protection
      recorded.
    type: str
    aliases: [rpo]
extends_documentation_fragment:
  - vsphere_replicator.replication.connection
  - vsphere_replicator.replication.mounts
attributes:
  check_mode:
    support: full
    description: The module only reads.
  diff_mode:
    support: none
    description: The module only reads, so there is nothing to show.
"""

EXAMPLES = r"""
- name: Every protection and its compliance with a 1h RPO
  vsphere_replicator.replication.protection_info:
    target_rpo: 1h
  register: protections

- name: The protection of db-01
  vsphere_replicator.replication.protection_info:
    vm: db-01
  register: db01
"""

RETURN = r"""
protections:
  description: One entry per protection, by VM name; durations are in seconds, times in ISO 8601.
  returned: success
  type: list
  elements: dict
  sample:
    - vm: db-01
      replica: db-01-replica
      state: protected
      restore_points: 2
      latest_point: rp-000002
      latest_created: "2026-01-01T10:00:00+00:00"
      age_seconds: 42.0
      target_rpo_seconds: 3600.0
      compliant: true
      last_bytes_moved: 65536
      last_bytes_changed: 65536
      last_error: null
      operation: null
      next_step: null
      busy: null
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vsphere_replicator.replication.plugins.module_utils.common import (
    argument_spec,
    duration,
    plain,
    run,
    vm_name,
)

try:
    from vsphere_replicator.replication import protection_of, protection_status
except ImportError:
    pass  # module_utils.common.run() fails the task naming the library to install


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(vm={"type": "str"}, target_rpo={"type": "str", "aliases": ["rpo"]}),
        supports_check_mode=True,
    )

    def act(conn: Any) -> dict[str, Any]:
        rpo = duration(module, "target_rpo")
        if module.params["vm"] is None:
            return {"changed": False, "protections": plain(protection_status(conn, target_rpo=rpo))}
        vm = vm_name(conn, module.params["vm"])
        found = protection_of(conn, vm)
        if found is not None and rpo is not None:
            found = next(s for s in protection_status(conn, target_rpo=rpo) if s.replica == found.replica)
        return {"changed": False, "protections": [] if found is None else [plain(found)]}

    run(module, act)


if __name__ == "__main__":
    main()
