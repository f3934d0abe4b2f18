"""A revert of the source between cycles: CBT answers with a hole (as ESXi does), the cycle resyncs.

After RevertToSnapshot_Task, ESXi keeps the change ids issued before it valid
and answers from the restored layer's tracking, which omits the blocks the
revert changed back (the lab models this; test_lab_cbt.py shows the answer).
A cycle must notice the revert itself — the layer its last restore point was
read from is no longer in the disk's backing chain — and read the disks whole.
"""

from __future__ import annotations

import json
from typing import Any

from pyVmomi import vim

from tests import labutil
from tests.conftest import CBT_BLOCK, DISK_SIZE, lab_vddk
from tests.replication_util import (
    STATE_KEY,
    assert_replica_matches,
    by_position,
    find,
    option,
    point_hashes,
    source_hashes,
    state,
)
from vsphere_replicator.replication import CycleSettings, ReplicaTarget, VDDKDisks, protect, replicate
from vsphere_replicator.replication.codec import decode_state, encode_state

TARGET = ReplicaTarget(datastore="secondary-ds")
NO_SAMPLING = CycleSettings(sample_areas=0)  # the revert must be found without sampling's luck


def _revert_between_cycles(si: Any, conn: Any, control: Any, vm_name: str, access: VDDKDisks) -> Any:
    """Protect, a user snapshot, a write, a cycle, then a revert to that snapshot and a write elsewhere."""
    control.write_random(vm_name, offset=CBT_BLOCK, length=3 * CBT_BLOCK, seed=1)
    control.write_random(vm_name, offset=5 * CBT_BLOCK, length=4096, seed=2, disk=1)
    protect(conn, vm_name, TARGET, settings=NO_SAMPLING)
    user = labutil.snapshot(find(si, vm_name), "before-the-upgrade")
    control.write_random(vm_name, offset=0, length=2 * CBT_BLOCK, seed=3)  # the revert undoes this
    second = replicate(conn, vm_name, replica_access=access, source_access=access)
    assert second.full_resync == () and second.restore_point == "rp-000002"
    labutil.wait(user.RevertToSnapshot_Task())
    control.write_random(vm_name, offset=DISK_SIZE - 8192, length=100, seed=4)
    return find(si, vm_name)


def test_a_revert_of_the_source_is_detected_and_its_disks_resynced(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str
) -> None:
    access = lab_vddk(conn)
    source = _revert_between_cycles(si, conn, control, vm_name, access)
    result = replicate(conn, vm_name, replica_access=access, source_access=access)
    keys = tuple(d.key for d in by_position(labutil.disks(source)))
    assert sorted(result.full_resync) == sorted(keys)
    reasons = dict(result.resync_reasons)
    assert set(reasons) == set(keys)
    assert all(r.startswith("source_reverted: ") for r in reasons.values()), reasons
    replica = find(si, f"{vm_name}-replica")
    assert_replica_matches(lab, source, replica, result.restore_point)
    recorded = {d["source_key"]: d["source_layer"] for d in state(replica)["disks"]}
    assert recorded == {d.key: d.backing.fileName for d in labutil.disks(source)}
    # The next cycle trusts CBT again: only the new write is read.
    control.write_random(vm_name, offset=7 * CBT_BLOCK, length=10, seed=5)
    after = replicate(conn, vm_name, replica_access=access, source_access=access)
    assert after.full_resync == () and after.bytes_changed == CBT_BLOCK
    assert_replica_matches(lab, source, replica, after.restore_point)


def test_without_the_recorded_layer_the_revert_leaves_a_hole_in_the_replica(
    lab: Any, si: Any, conn: Any, control: Any, vm_name: str
) -> None:
    """A state written before the layer was recorded still loads, and cannot see the revert:
    the restore point then keeps the bytes the revert undid — the hole is real."""
    access = lab_vddk(conn)
    source = _revert_between_cycles(si, conn, control, vm_name, access)
    replica = find(si, f"{vm_name}-replica")
    old = json.loads(option(replica, STATE_KEY) or "{}")
    for disk in old["disks"]:
        del disk["source_layer"]  # as an earlier version wrote it
    text = json.dumps(old, separators=(",", ":"), sort_keys=True)
    assert all(d.source_layer is None for d in decode_state(text).disks)
    assert encode_state(decode_state(text))  # and it is written back valid
    labutil.wait(
        replica.ReconfigVM_Task(
            vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=STATE_KEY, value=text)])
        )
    )
    result = replicate(conn, vm_name, replica_access=access, source_access=access, settings=NO_SAMPLING)
    assert result.full_resync == ()
    assert result.bytes_changed == CBT_BLOCK  # only the write after the revert: CBT's answer
    assert point_hashes(lab, replica, result.restore_point)[0] != source_hashes(lab, source)[0]
