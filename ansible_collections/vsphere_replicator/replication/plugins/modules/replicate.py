#!/usr/bin/python
# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: replicate
short_description: Run one replication cycle of a protected VM
description:
  - Runs one cycle for the VM named O(vm) (resuming an interrupted one first) with the settings its protection
    recorded, writing the changed blocks into the replica's disks through O(mounts).
  - The task is C(changed) when the cycle made a new restore point; when the source had not changed since
    the newest one the cycle only confirms it, and the task is not C(changed).
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
    support: partial
    description: Nothing is changed and nothing is read from the disks.
    details:
      - Whether the source changed since the newest restore point is known only from the cycle's own
        snapshot, which check mode does not take, so RV(ignore:changed) is C(true) whenever the VM is
        protected and replicating.
  diff_mode:
    support: full
    description: The newest restore point before and after the cycle.
seealso:
  - module: vsphere_replicator.replication.restore_point_info
"""

EXAMPLES = r"""
- name: Replicate db-01, writing its replica on a datastore mounted at /mnt/secondary
  vsphere_replicator.replication.replicate:
    vm: db-01
    mounts:
      secondary-ds: /mnt/secondary
"""

RETURN = r"""
cycle:
  description: What the cycle did; C(confirmed) is true when nothing had changed.
  returned: success, not in check mode
  type: dict
  sample:
    vm: db-01
    replica: db-01-replica
    restore_point: rp-000002
    bytes_changed: 65536
    bytes_moved: 65536
    confirmed: false
restore_point:
  description: The newest restore point after the cycle (or before it, in check mode).
  returned: success
  type: str
  sample: rp-000002
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vsphere_replicator.replication.plugins.module_utils.common import (
    argument_spec,
    disk_access,
    plain,
    run,
    vm_name,
)

try:
    from vsphere_replicator.errors import NotFound, StateError
    from vsphere_replicator.replication import protection_of, replicate
    from vsphere_replicator.replication.status import FAILED_OVER
except ImportError:
    pass  # module_utils.common.run() fails the task naming the library to install


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(vm={"type": "str", "required": True}),
        supports_check_mode=True,
    )

    def act(conn: Any) -> dict[str, Any]:
        vm = vm_name(conn, module.params["vm"])
        if module.check_mode:
            status = protection_of(conn, vm)
            if status is None:
                raise NotFound(f"{vm} is not protected: run protect first", vm=vm)
            if status.state == FAILED_OVER:
                raise StateError(f"{vm} has failed over to {status.replica}: fail back first", vm=vm)
            point = status.latest_point
            return {
                "changed": True,
                "restore_point": point,
                "diff": {"before": {"restore_point": point}, "after": {"restore_point": "(a new one)"}},
            }
        before = protection_of(conn, vm)
        writes, reads = disk_access(module, conn)
        cycle = replicate(conn, vm, replica_access=writes, source_access=reads, verify_access=reads)
        previous = before.latest_point if before is not None else None
        return {
            "changed": not cycle.confirmed,
            "cycle": plain(cycle),
            "restore_point": cycle.restore_point,
            "diff": {"before": {"restore_point": previous}, "after": {"restore_point": cycle.restore_point}},
        }

    run(module, act)


if __name__ == "__main__":
    main()
