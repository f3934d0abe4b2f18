#!/usr/bin/python
# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: protection
short_description: Protect a VM with a replica, converge its recorded settings, or end its protection
description:
  - O(state=present) protects the VM named O(vm) with a replica on O(datastore) and its first restore point
    (a clone of a seed snapshot, or an existing powered-off copy with O(adopt)); an interrupted protect is
    finished.
  - When the VM is already protected, the settings recorded at protect time (O(keep), O(max_age),
    O(target_rpo), O(quiesce), O(verify), O(max_change_share), O(networks)) are converged to the ones given;
    options not given are left as recorded. With C(--diff) the settings before and after are shown.
  - O(state=absent) ends the protection; the replica is kept as a plain powered-off VM at its newest restore
    point, or deleted with O(delete_replica=true).
version_added: 0.1.0
author:
  - vsphere_replicator contributors (!UNKNOWN)
options:
  vm:
    description: The protected VM, by name or managed object id (C(vm-42)).
    type: str
    required: true
  state:
    description: Whether the VM is protected.
    type: str
    choices: [present, absent]
    default: present
  datastore:
    description:
      - The datastore the replica lives on. Required to protect; a VM already protected on another
        datastore is refused (unprotect it first).
    type: str
  adopt:
    description:
      - An existing powered-off copy of the VM (name or managed object id) to become the replica instead of
        a clone; every disk is compared byte for byte with the seed snapshot through O(mounts).
    type: str
  replica_name:
    description: The replica's name; C({vm}) stands for the VM's name.
    type: str
    default: "{vm}-replica"
  host:
    description: The ESXi host the replica is registered on.
    type: str
  resource_pool:
    description: The resource pool of the replica.
    type: str
  folder:
    description: The VM folder of the replica.
    type: str
  provisioning:
    description: How the replica's disks are provisioned.
    type: str
    choices: [thin, thick-lazy, thick-eager]
    default: thin
  allow_source_datastore:
    description: Allow the replica on a datastore the source lives on (it then survives no loss of it).
    type: bool
    default: false
  keep:
    description: How many restore points are kept (1 to 24).
    type: int
  max_age:
    description: Restore points older than this are dropped (C(90s), C(15m), C(1h30m), C(7d)).
    type: str
  target_rpo:
    description: The recovery point objective status reports compliance against (C(15m), C(1h)).
    type: str
    aliases: [rpo]
  quiesce:
    description: Whether each cycle's snapshot quiesces the guest.
    type: str
    choices: [never, try, require]
  verify:
    description: Compare every byte of each new restore point with the source snapshot.
    type: bool
  max_change_share:
    description: Refuse an incremental that would move more than this share of a disk (0 to 1).
    type: float
  networks:
    description:
      - The recovery network mapping, source port group to the port group the replica's NICs move to on
        failover. Every recovery port group must exist.
    type: dict
  delete_replica:
    description: With O(state=absent), delete the replica instead of keeping it as a plain VM.
    type: bool
    default: false
extends_documentation_fragment:
  - vsphere_replicator.replication.connection
  - vsphere_replicator.replication.mounts
attributes:
  check_mode:
    support: full
    description: Nothing is changed; RV(ignore:changed) says whether the VM would be protected, unprotected,
      or its settings changed.
  diff_mode:
    support: full
    description: The protection's state and recorded settings before and after.
seealso:
  - module: vsphere_replicator.replication.protection_info
"""

EXAMPLES = r"""
- name: Protect db-01 on the secondary site, keeping 8 restore points
  vsphere_replicator.replication.protection:
    hostname: vcenter.example.com
    username: replicator@vsphere.local
    password: "{{ vcenter_password }}"
    ca_file: /etc/ssl/vcenter-ca.pem
    vm: db-01
    datastore: secondary-ds
    keep: 8
    target_rpo: 15m

- name: Change the recorded settings of a protected VM (shown with --diff)
  vsphere_replicator.replication.protection:
    vm: db-01
    datastore: secondary-ds
    keep: 3
    max_age: 7d
    networks:
      prod-net: dr-net

- name: End the protection and delete the replica
  vsphere_replicator.replication.protection:
    vm: db-01
    state: absent
    delete_replica: true
"""

RETURN = r"""
protection:
  description: The VM's protection after the task (see M(vsphere_replicator.replication.protection_info)).
  returned: when O(state=present) and not in check mode
  type: dict
  sample: {"vm": "db-01", "replica": "db-01-replica", "state": "protected", "restore_points": 1}
seed:
  description: The first restore point the task made (or, when already protected, the newest one).
  returned: when O(state=present) and not in check mode
  type: dict
  sample: {"restore_point": "rp-000001", "bytes_moved": 33554432, "confirmed": false}
settings:
  description: The recorded settings after the task (durations in seconds), with the recovery C(networks).
  returned: when the VM was protected already
  type: dict
  sample: {"keep": 3, "max_age": 604800.0, "quiesce": "never", "networks": {"prod-net": "dr-net"}}
changed_settings:
  description: The names of the recorded settings the task changed (or would change in check mode).
  returned: when the VM was protected already
  type: list
  elements: str
  sample: [keep, max_age]
unprotected:
  description: What ending the protection did to the replica.
  returned: when O(state=absent) removed a protection, not in check mode
  type: dict
  sample: {"replica": "db-01-replica", "deleted": true, "snapshots_removed": 0}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vsphere_replicator.replication.plugins.module_utils.common import (
    argument_spec,
    disk_access,
    duration,
    plain,
    run,
    vm_name,
)

try:
    from vsphere_replicator.replication import (
        CycleSettings,
        ReplicaTarget,
        protect,
        protection_of,
        unprotect,
        update_settings,
    )
    from vsphere_replicator.replication.restore_points import replica_state
    from vsphere_replicator.replication.status import FAILED_OVER
except ImportError:
    pass  # module_utils.common.run() fails the task naming the library to install


SETTINGS = ("keep", "max_age", "target_rpo", "quiesce", "verify", "max_change_share")


def _given_settings(module: AnsibleModule) -> dict[str, Any]:
    """The cycle settings the task names, as the library's values; those not given are left out."""
    p = module.params
    given: dict[str, Any] = {}
    for name in ("keep", "quiesce", "verify", "max_change_share"):
        if p[name] is not None:
            given[name] = p[name]
    for name in ("max_age", "target_rpo"):
        value = duration(module, name)
        if value is not None:
            given[name] = value
    return given


def _networks(module: AnsibleModule) -> tuple[tuple[str, str], ...] | None:
    given = module.params["networks"]
    return None if given is None else tuple((str(k), str(v)) for k, v in given.items())


def _settings_view(settings: Any, networks: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {**plain(settings), "networks": dict(networks)}


def _present(module: AnsibleModule, conn: Any, vm: str) -> dict[str, Any]:
    p = module.params
    status = protection_of(conn, vm)
    given = _given_settings(module)
    networks = _networks(module)
    if status is None or status.state == "seeding":
        if not p["datastore"]:
            module.fail_json(msg=f"{vm} is not protected: datastore is required to protect it", vm=vm)
        target = ReplicaTarget(
            datastore=p["datastore"],
            host=p["host"],
            resource_pool=p["resource_pool"],
            folder=p["folder"],
            provisioning=p["provisioning"],
            name=p["replica_name"],
            networks=networks or (),
        )
        settings = CycleSettings(**given)
        after = {
            "state": "present",
            "datastore": target.datastore,
            **_settings_view(settings, target.networks),
        }
        result: dict[str, Any] = {"changed": True, "diff": {"before": {"state": "absent"}, "after": after}}
        if module.check_mode:
            return result
        writes, reads = disk_access(module, conn)
        seed = protect(
            conn,
            vm,
            target,
            settings=settings,
            adopt=p["adopt"],
            replica_access=writes,
            source_access=reads,
            allow_source_datastore=p["allow_source_datastore"],
        )
        return {**result, "seed": plain(seed), "protection": plain(protection_of(conn, vm))}
    seed = None
    if status.state != FAILED_OVER:
        if module.check_mode:
            recorded = replica_state(conn, vm).target.datastore
            if p["datastore"] and recorded != p["datastore"]:
                module.fail_json(
                    msg=f"{vm} is already protected by {status.replica} on {recorded}; "
                    "unprotect it first to protect it elsewhere",
                    vm=vm,
                    error="InvalidInput",
                )
        elif p["datastore"]:
            # Protecting what is protected checks the datastore and tidies what a crash left; nothing else.
            seed = plain(protect(conn, vm, ReplicaTarget(datastore=p["datastore"])))
    change = update_settings(conn, vm, dry_run=module.check_mode, networks=networks, **given)
    before = _settings_view(change.before, change.networks_before)
    after = _settings_view(change.after, change.networks_after)
    result = {
        "changed": bool(change.changed),
        "settings": after,
        "changed_settings": list(change.changed),
        "diff": {"before": {"state": "present", **before}, "after": {"state": "present", **after}},
    }
    if not module.check_mode:
        result["protection"] = plain(protection_of(conn, vm))
        if seed is not None:
            result["seed"] = seed
    return result


def _absent(module: AnsibleModule, conn: Any, vm: str) -> dict[str, Any]:
    status = protection_of(conn, vm)
    if status is None:
        return {"changed": False, "diff": {"before": {"state": "absent"}, "after": {"state": "absent"}}}
    before = {"state": "present", "replica": status.replica}
    after = {"state": "absent", "replica": None if module.params["delete_replica"] else status.replica}
    result: dict[str, Any] = {"changed": True, "diff": {"before": before, "after": after}}
    if module.check_mode:
        return result
    done = unprotect(conn, vm, delete_replica=module.params["delete_replica"])
    return {**result, "unprotected": plain(done)}


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            vm={"type": "str", "required": True},
            state={"type": "str", "choices": ["present", "absent"], "default": "present"},
            datastore={"type": "str"},
            adopt={"type": "str"},
            replica_name={"type": "str", "default": "{vm}-replica"},
            host={"type": "str"},
            resource_pool={"type": "str"},
            folder={"type": "str"},
            provisioning={"type": "str", "choices": ["thin", "thick-lazy", "thick-eager"], "default": "thin"},
            allow_source_datastore={"type": "bool", "default": False},
            keep={"type": "int"},
            max_age={"type": "str"},
            target_rpo={"type": "str", "aliases": ["rpo"]},
            quiesce={"type": "str", "choices": ["never", "try", "require"]},
            verify={"type": "bool"},
            max_change_share={"type": "float"},
            networks={"type": "dict"},
            delete_replica={"type": "bool", "default": False},
        ),
        supports_check_mode=True,
    )

    def act(conn: Any) -> dict[str, Any]:
        vm = vm_name(conn, module.params["vm"])
        if module.params["state"] == "absent":
            return _absent(module, conn, vm)
        return _present(module, conn, vm)

    run(module, act)


if __name__ == "__main__":
    main()
