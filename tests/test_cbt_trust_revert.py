"""Telling a revert of the source from a Storage vMotion by the backing chain alone."""

from __future__ import annotations

from vsphere_replicator.inventory import DiskInfo
from vsphere_replicator.replication.cbt_trust import SOURCE_REVERTED, reverted
from vsphere_replicator.replication.state import DiskState


def disk(*chain: str) -> DiskInfo:
    return DiskInfo(
        key=2000,
        label="Hard disk 1",
        controller_key=1000,
        unit_number=0,
        capacity=1 << 30,
        file_name=chain[0],
        datastore=chain[0][1:].partition("]")[0],
        thin=True,
        eager_scrub=False,
        change_id="52 aa/3",
        uuid="6000C29a",
        parent_file=chain[1] if len(chain) > 1 else None,
        parents=chain[1:],
    )


KNOWN = DiskState(
    source_key=2000, replica_key=2000, capacity=1 << 30, change_id="52 aa/3", source_uuid="6000C29a",
    source_layer="[primary-ds] db/db-000001.vmdk",
)  # fmt: skip


def test_the_layer_read_last_time_still_in_the_chain_is_no_revert() -> None:
    assert reverted(KNOWN, disk("[primary-ds] db/db-000002.vmdk", "[primary-ds] db/db-000001.vmdk")) is None


def test_a_chain_that_moved_whole_to_another_datastore_is_no_revert() -> None:
    moved = disk(
        "[secondary-ds] db/db-000002.vmdk", "[secondary-ds] db/db-000001.vmdk", "[secondary-ds] db/db.vmdk"
    )
    assert reverted(KNOWN, moved) is None


def test_a_chain_without_the_layer_is_a_revert() -> None:
    why = reverted(KNOWN, disk("[primary-ds] db/db-000003.vmdk", "[primary-ds] db/db.vmdk"))
    assert why is not None and why.startswith(SOURCE_REVERTED)


def test_a_same_named_layer_on_another_datastore_while_the_chain_stays_is_still_a_revert() -> None:
    """Only a move of the whole chain away from the layer's datastore lets its path stand in for it."""
    mixed = disk("[primary-ds] db/db-000003.vmdk", "[secondary-ds] db/db-000001.vmdk")
    assert reverted(KNOWN, mixed) is not None


def test_a_moved_chain_without_the_layer_is_a_revert() -> None:
    why = reverted(KNOWN, disk("[secondary-ds] db/db-000003.vmdk", "[secondary-ds] db/db.vmdk"))
    assert why is not None and why.startswith(SOURCE_REVERTED)
