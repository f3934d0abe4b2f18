#!/usr/bin/python
# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: failback
short_description: Bring production back from the failed-over replica to the original VM
description:
  - The original VM named O(vm) (powered off) becomes a replica of the running one, production switches back
    to it, and it is protected again in its first direction. Disks are written through O(mounts).
  - Running it again after an interruption carries on; a VM that is not failed over is not C(changed).
version_added: 0.1.0
author:
  - vsphere_replicator contributors (!UNKNOWN)
options:
  vm:
    description: The original VM, by name or managed object id (C(vm-42)).
    type: str
    required: true
  switch:
    description:
      - V(false) runs only the first stage (the original becomes a replica of the running VM) and does not
        switch production back.
    type: bool
    default: true
extends_documentation_fragment:
  - vsphere_replicator.replication.connection
  - vsphere_replicator.replication.mounts
attributes:
  check_mode:
    support: full
    description: Nothing is changed; RV(ignore:changed) says whether the VM is failed over (or a failback is
      in flight).
  diff_mode:
    support: full
    description: Which VM runs production before and after.
seealso:
  - module: vsphere_replicator.replication.failover
"""

EXAMPLES = r"""
- name: Fail db-01 back to the primary site
  vsphere_replicator.replication.failback:
    vm: db-01
    mounts:
      primary-ds: /mnt/primary
      secondary-ds: /mnt/secondary
"""

RETURN = r"""
failback:
  description: Which VM runs now and at which restore point (null with O(switch=false)).
  returned: success, not in check mode
  type: dict
  sample: {"vm": "db-01", "running": "db-01", "kind": "failback", "restore_point": "rp-000001"}
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
    from vsphere_replicator.replication import protection_of
    from vsphere_replicator.replication.failback import failback
    from vsphere_replicator.replication.status import FAILED_OVER
except ImportError:
    pass  # module_utils.common.run() fails the task naming the library to install


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            vm={"type": "str", "required": True},
            switch={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
    )

    def act(conn: Any) -> dict[str, Any]:
        vm = vm_name(conn, module.params["vm"])
        status = protection_of(conn, vm)
        pending = status is not None and (
            status.state == FAILED_OVER or (status.operation or "").startswith("failback")
        )
        running = status.replica if pending and status is not None else vm
        result: dict[str, Any] = {
            "changed": pending,
            "diff": {"before": {"running": running}, "after": {"running": vm if pending else running}},
        }
        if module.check_mode:
            return result
        writes, reads = disk_access(module, conn)
        done = failback(conn, vm, replica_access=writes, source_access=reads, switch=module.params["switch"])
        if done is None:  # switch=false: the first stage only
            return {**result, "changed": True, "failback": None}
        result["diff"]["after"] = {"running": done.running}
        return {**result, "changed": not done.already_done or done.resumed, "failback": plain(done)}

    run(module, act)


if __name__ == "__main__":
    main()
