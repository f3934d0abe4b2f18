#!/usr/bin/python
# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: failover
short_description: Fail a protected VM over to its replica, or bring up and remove a test copy
description:
  - O(mode=test) brings up an isolated, running copy of a restore point (the replica and the source are
    untouched, replication carries on); O(state=absent) removes every test copy of the VM.
  - O(mode=planned) syncs, powers the source off, syncs what is left and brings the replica up; no write is
    lost. The replica's disks are written through O(mounts).
  - O(mode=unplanned) brings the replica up at O(restore_point) (default the newest) without touching the
    source, which may be gone.
  - The module is idempotent. A VM already failed over, or a test copy of that restore point already
    running, is not C(changed); an interrupted failover is carried on.
version_added: 0.1.0
author:
  - vsphere_replicator contributors (!UNKNOWN)
options:
  vm:
    description: The protected VM, by name or managed object id (C(vm-42)).
    type: str
    required: true
  mode:
    description: Which failover.
    type: str
    choices: [test, planned, unplanned]
    default: test
  state:
    description:
      - V(present) fails over (or brings the test copy up); V(absent) removes the test copies, with
        O(mode=test) only. Fail back with M(vsphere_replicator.replication.failback).
    type: str
    choices: [present, absent]
    default: present
  restore_point:
    description: The restore point (C(rp-000002)) a test copy or an unplanned failover is made of; default
      the newest.
    type: str
  test_name:
    description: The name of a test copy; C({vm}) stands for the VM's name.
    type: str
    default: "{vm}-failover-test"
  force:
    description: With O(mode=unplanned), fail over even though the source runs in this vCenter.
    type: bool
    default: false
extends_documentation_fragment:
  - vsphere_replicator.replication.connection
  - vsphere_replicator.replication.mounts
attributes:
  check_mode:
    support: full
    description: Nothing is changed; RV(ignore:changed) says whether a failover would run or a copy be made
      or removed.
  diff_mode:
    support: full
    description: Which VM runs, and the test copies, before and after.
seealso:
  - module: vsphere_replicator.replication.failback
"""

EXAMPLES = r"""
- name: Bring up a test copy of db-01's newest restore point
  vsphere_replicator.replication.failover:
    vm: db-01
    mode: test

- name: Remove it again
  vsphere_replicator.replication.failover:
    vm: db-01
    mode: test
    state: absent

- name: Planned failover of db-01 to its replica
  vsphere_replicator.replication.failover:
    vm: db-01
    mode: planned
    mounts:
      secondary-ds: /mnt/secondary
"""

RETURN = r"""
failover:
  description: Which VM runs now, at which restore point, and the NICs that moved.
  returned: when O(state=present), not in check mode
  type: dict
  sample: {"vm": "db-01", "running": "db-01-replica", "kind": "planned", "restore_point": "rp-000003"}
removed:
  description: The test copies removed (or, in check mode, that would be).
  returned: when O(state=absent)
  type: list
  elements: str
  sample: [db-01-failover-test]
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
    from vsphere_replicator.errors import InvalidInput, NotFound
    from vsphere_replicator.replication import (
        cleanup_test_failover,
        failover_test_copies,
        list_restore_points,
        planned_failover,
        protection_of,
        start_test_failover,
        unplanned_failover,
    )
    from vsphere_replicator.replication.status import FAILED_OVER
except ImportError:
    pass  # module_utils.common.run() fails the task naming the library to install


def _copies(conn: Any, vm: str) -> list[str]:
    return sorted(c.name for c in failover_test_copies(conn, vm))


def _test(module: AnsibleModule, conn: Any, vm: str) -> dict[str, Any]:
    p = module.params
    before = _copies(conn, vm)
    if p["state"] == "absent":
        result: dict[str, Any] = {
            "changed": bool(before),
            "removed": before,
            "diff": {"before": {"test_copies": before}, "after": {"test_copies": []}},
        }
        if before and not module.check_mode:
            result["removed"] = sorted(cleanup_test_failover(conn, vm))
        return result
    point = p["restore_point"] or list_restore_points(conn, vm)[-1].id
    done = any(c.restore_point == point and c.running for c in failover_test_copies(conn, vm))
    name = p["test_name"].replace("{vm}", vm)
    result = {
        "changed": not done,
        "diff": {"before": {"test_copies": before}, "after": {"test_copies": sorted({*before, name})}},
    }
    if module.check_mode:
        return result
    made = start_test_failover(conn, vm, restore_point=p["restore_point"], name=p["test_name"])
    result["diff"]["after"] = {"test_copies": _copies(conn, vm)}
    return {**result, "failover": plain(made)}


def _production(module: AnsibleModule, conn: Any, vm: str) -> dict[str, Any]:
    p = module.params
    if p["state"] == "absent":
        raise InvalidInput(
            f"state=absent removes test copies (mode=test); to bring {vm} back, use the failback module",
            vm=vm,
        )
    status = protection_of(conn, vm)
    if status is None:
        raise NotFound(f"{vm} is not protected: there is nothing to fail over to", vm=vm)
    done = status.state == FAILED_OVER
    running_before = status.replica if done else vm
    result: dict[str, Any] = {
        "changed": not done,
        "diff": {"before": {"running": running_before}, "after": {"running": status.replica}},
    }
    if module.check_mode:
        return result
    if p["mode"] == "planned":
        writes, reads = disk_access(module, conn)
        made = planned_failover(conn, vm, replica_access=writes, source_access=reads)
    else:
        made = unplanned_failover(conn, vm, restore_point=p["restore_point"], force=p["force"])
    result["changed"] = not made.already_done
    result["diff"]["after"] = {"running": made.running}
    return {**result, "failover": plain(made)}


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            vm={"type": "str", "required": True},
            mode={"type": "str", "choices": ["test", "planned", "unplanned"], "default": "test"},
            state={"type": "str", "choices": ["present", "absent"], "default": "present"},
            restore_point={"type": "str"},
            test_name={"type": "str", "default": "{vm}-failover-test"},
            force={"type": "bool", "default": False},
        ),
        supports_check_mode=True,
    )

    def act(conn: Any) -> dict[str, Any]:
        vm = vm_name(conn, module.params["vm"])
        if module.params["mode"] == "test":
            return _test(module, conn, vm)
        return _production(module, conn, vm)

    run(module, act)


if __name__ == "__main__":
    main()
