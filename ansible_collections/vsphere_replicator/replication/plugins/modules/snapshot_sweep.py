#!/usr/bin/python
# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_sweep
short_description: Remove the replication snapshots that nothing needs any more
description:
  - Removes the snapshots this library made that are older than O(older_than) and that no cycle, seed,
    failover or failback in flight still needs (those are spared, with the reason); a VM another operation
    holds is left alone.
  - In check mode it is a dry run listing what would go.
version_added: 0.1.0
author:
  - vsphere_replicator contributors (!UNKNOWN)
options:
  older_than:
    description: Only snapshots older than this (C(90s), C(15m), C(1h), C(7d); C(0s) for any age).
    type: str
    default: 1h
  vm:
    description: Only the snapshots of this VM (by name); default every VM.
    type: str
extends_documentation_fragment:
  - vsphere_replicator.replication.connection
  - vsphere_replicator.replication.mounts
attributes:
  check_mode:
    support: full
    description: A dry run; RV(removed) lists the snapshots that would be removed.
  diff_mode:
    support: full
    description: The snapshots removed, as a before/after list.
"""

EXAMPLES = r"""
- name: What would a sweep remove?
  vsphere_replicator.replication.snapshot_sweep:
    older_than: 1h
  check_mode: true
  register: would

- name: Remove the leftovers of db-01 of any age
  vsphere_replicator.replication.snapshot_sweep:
    vm: db-01
    older_than: 0s
"""

RETURN = r"""
removed:
  description: The snapshots removed (in check mode, that would be).
  returned: success
  type: list
  elements: dict
  sample: [{"vm": "db-01", "snapshot": "vr-cycle-...", "created": "2026-01-01T10:00:00+00:00"}]
spared:
  description: The snapshots of ours left alone, and why.
  returned: success
  type: list
  elements: dict
  sample: [{"vm": "db-01", "snapshot": "vr-cycle-...", "reason": "needed by the cycle in flight of db-01"}]
"""

from datetime import timedelta
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vsphere_replicator.replication.plugins.module_utils.common import (
    argument_spec,
    duration,
    plain,
    run,
)

try:
    from vsphere_replicator.inventory import VMSelector
    from vsphere_replicator.replication import sweep_snapshots
except ImportError:
    pass  # module_utils.common.run() fails the task naming the library to install

_ANY_AGE = ("0", "0s", "0m", "0h", "0d")


def _orphan(orphan: Any) -> dict[str, Any]:
    return {
        "vm": orphan.vm,
        "snapshot": orphan.snapshot.name,
        "moref": orphan.snapshot.moref,
        "created": plain(orphan.snapshot.created),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(older_than={"type": "str", "default": "1h"}, vm={"type": "str"}),
        supports_check_mode=True,
    )

    def act(conn: Any) -> dict[str, Any]:
        any_age = module.params["older_than"].strip() in _ANY_AGE
        older_than = timedelta(0) if any_age else (duration(module, "older_than") or timedelta(0))
        vm = module.params["vm"]
        selector = VMSelector(name=vm) if vm else None
        swept = sweep_snapshots(conn, older_than=older_than, dry_run=module.check_mode, selector=selector)
        removed = [_orphan(o) for o in swept.removed]
        spared = [{**_orphan(s.snapshot), "reason": s.reason} for s in swept.spared]
        names = sorted(f"{o['vm']}: {o['snapshot']}" for o in removed)
        return {
            "changed": bool(removed),
            "removed": removed,
            "spared": spared,
            "diff": {"before": {"snapshots": names}, "after": {"snapshots": []}},
        }

    run(module, act)


if __name__ == "__main__":
    main()
