"""What an idempotent caller asks before acting: one VM's protection, a settings dry run, the test copies.

The Ansible collection's check mode rests on these: each answers without
changing anything, and says afterwards what a real call would have done.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.replication_util import STATE_KEY, find, option, state
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput, NotFound
from vsphere_replicator.inventory import VMSelector
from vsphere_replicator.replication import (
    FailoverCopy,
    ReplicaTarget,
    cleanup_test_failover,
    failover_test_copies,
    protect,
    protection_of,
    start_test_failover,
    unprotect,
    update_settings,
)


def test_protection_of_is_none_for_an_unprotected_vm_and_not_found_for_a_missing_one(
    conn: Connection, vm_name: str
) -> None:
    assert protection_of(conn, vm_name) is None
    with pytest.raises(NotFound):
        protection_of(conn, "no-such-vm-anywhere")


def test_settings_dry_run_networks_and_test_copies_change_nothing_until_asked(
    conn: Connection, si: Any, vm_name: str
) -> None:
    protect(conn, vm_name, ReplicaTarget(datastore="secondary-ds"))
    try:
        now = datetime.now(UTC)
        found = protection_of(conn, vm_name, now=now)
        assert found is not None and (found.vm, found.state) == (vm_name, "protected")
        by_moref = protection_of(conn, VMSelector(moref=find(si, vm_name)._moId), now=now)
        assert by_moref == found

        replica = find(si, f"{vm_name}-replica")
        recorded = option(replica, STATE_KEY)
        wanted = [("VM Network", "DR Network")]
        would = update_settings(conn, vm_name, dry_run=True, keep=2, networks=wanted)
        assert would.changed == ("keep", "networks")
        assert (would.before.keep, would.after.keep) == (5, 2)
        assert (would.networks_before, would.networks_after) == ((), (("VM Network", "DR Network"),))
        assert option(replica, STATE_KEY) == recorded  # nothing written

        with pytest.raises(InvalidInput, match="no-such-port-group"):
            update_settings(conn, vm_name, networks=[("VM Network", "no-such-port-group")])
        done = update_settings(conn, vm_name, keep=2, networks=wanted)
        assert done.changed == ("keep", "networks")
        assert state(replica)["settings"]["keep"] == 2
        assert state(replica)["target"]["networks"] == [["VM Network", "DR Network"]]
        again = update_settings(conn, vm_name, dry_run=True, keep=2, networks=wanted)
        assert again.changed == ()

        assert failover_test_copies(conn, vm_name) == ()
        start_test_failover(conn, vm_name)
        copies = failover_test_copies(conn, vm_name)
        assert copies == (
            FailoverCopy(name=f"{vm_name}-failover-test", restore_point="rp-000001", running=True),
        )
        assert find(si, f"{vm_name}-failover-test").runtime.powerState == "poweredOn"
        assert cleanup_test_failover(conn, vm_name) == (f"{vm_name}-failover-test",)
        assert failover_test_copies(conn, vm_name) == ()
    finally:
        unprotect(conn, vm_name, delete_replica=True)  # gives the shared lab its space back
    assert protection_of(conn, vm_name) is None
