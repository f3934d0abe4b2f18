#!/usr/bin/python
# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_point_info
short_description: The restore points of a protected VM
description:
  - Lists the restore points of the VM named O(vm), oldest first, as its replica's state records them.
    Changes nothing.
version_added: 0.1.0
author:
  - vsphere_replicator contributors (!UNKNOWN)
options:
  vm:
    description: The protected VM, by name or managed object id (C(vm-42)).
    type: str
    required: true
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
seealso:
  - module: vsphere_replicator.replication.failover
"""

EXAMPLES = r"""
- name: The restore points of db-01
  vsphere_replicator.replication.restore_point_info:
    vm: db-01
  register: points

- name: Bring up a test copy of the oldest one
  vsphere_replicator.replication.failover:
    vm: db-01
    mode: test
    restore_point: "{{ points.restore_points[0].id }}"
"""

RETURN = r"""
restore_points:
  description: The restore points, oldest first; times in ISO 8601.
  returned: success
  type: list
  elements: dict
  sample:
    - id: rp-000001
      snapshot: snapshot-101
      created: "2026-01-01T10:00:00+00:00"
      quiesced: false
      bytes_moved: 33554432
      bytes_changed: 33554432
      confirmed: null
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vsphere_replicator.replication.plugins.module_utils.common import (
    argument_spec,
    plain,
    run,
    vm_name,
)

try:
    from vsphere_replicator.replication import list_restore_points
except ImportError:
    pass  # module_utils.common.run() fails the task naming the library to install


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(vm={"type": "str", "required": True}),
        supports_check_mode=True,
    )

    def act(conn: Any) -> dict[str, Any]:
        points = list_restore_points(conn, vm_name(conn, module.params["vm"]))
        return {"changed": False, "restore_points": plain(points)}

    run(module, act)


if __name__ == "__main__":
    main()
