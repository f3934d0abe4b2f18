"""Whether Changed Block Tracking can be trusted this cycle: sample what it calls unchanged.

CBT can miss writes (VMware KB 2090639: resets, some consolidations, host
crashes) without invalidating its change ids. Before trusting an
incremental, a few allocated blocks that CBT reports unchanged are read on
both sides and compared, as benji does before trusting its hints: any
difference means the disk is read whole.

A revert of the source is the one case CBT answers wrongly by design, and
sampling would catch it only by chance: `reverted` finds it from the disk's
backing chain instead.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable

from vsphere_replicator.cbt import ALL_ALLOCATED, changed_areas
from vsphere_replicator.connection import Connection
from vsphere_replicator.extents import Extent
from vsphere_replicator.inventory import DiskInfo, SnapshotInfo, VMInfo
from vsphere_replicator.replication.state import DiskState
from vsphere_replicator.transport.base import BlockSource

SAMPLE_LENGTH = 64 << 10
CBT_LIED = "CBT reported"  # how a resync reason found by sampling starts


def sample_unchanged(
    conn: Connection,
    source: VMInfo,
    snapshot: SnapshotInfo,
    disk: DiskInfo,
    changed: tuple[Extent, ...],
    wanted: int,
    open_pair: Callable[[], tuple[BlockSource, BlockSource]],
) -> Extent | None:
    """The first sampled area CBT calls unchanged that differs between the two sides.

    Samples come from a few query windows at random offsets (at most four
    per block wanted), not from a map of the whole disk: the check costs a
    handful of calls whatever the disk's size. `open_pair` opens (the
    source snapshot's disk, the replica's disk) only when there is
    something to compare. None when the sample agrees.
    """
    if wanted == 0:
        return None
    rng = random.Random(f"{source.instance_uuid}:{disk.key}:{snapshot.moref}")
    picks: set[int] = set()
    for _ in range(4 * wanted):
        if len(picks) >= wanted:
            break
        start = rng.randrange(disk.capacity // SAMPLE_LENGTH or 1) * SAMPLE_LENGTH
        window = changed_areas(conn, source, snapshot, disk, ALL_ALLOCATED, start=start, max_queries=1).areas
        picks.update(_sample_blocks(_unchanged_blocks(window, changed, SAMPLE_LENGTH), 1, rng, SAMPLE_LENGTH))
    if not picks:
        return None
    src, dst = open_pair()
    try:
        for offset in sorted(picks):
            length = min(SAMPLE_LENGTH, disk.capacity - offset)
            if src.read(offset, length) != dst.read(offset, length):
                return Extent(offset, length)
    finally:
        src.close()
        dst.close()
    return None


def lie_reason(area: Extent) -> str:
    """The resync reason for a sampled area that CBT called unchanged but differs."""
    return (
        f"{CBT_LIED} bytes {area.start}-{area.end} unchanged, but they differ from the "
        "replica: tracking cannot be trusted (VMware KB 2090639)"
    )


def _unchanged_blocks(
    allocated: tuple[Extent, ...], changed: tuple[Extent, ...], block: int
) -> list[tuple[int, int]]:
    """[first, last) block ranges inside allocated areas that no changed area touches (both sorted)."""
    busy = [(a.start // block, (a.end - 1) // block + 1) for a in changed]
    spans: list[tuple[int, int]] = []
    i = 0
    for area in allocated:
        lo, hi = area.start // block, (area.end - 1) // block + 1
        while i < len(busy) and busy[i][1] <= lo:
            i += 1
        j = i
        while lo < hi:
            if j < len(busy) and busy[j][0] < hi:
                if busy[j][0] > lo:
                    spans.append((lo, busy[j][0]))
                lo = max(lo, busy[j][1])
                j += 1
            else:
                spans.append((lo, hi))
                break
    return spans


def _sample_blocks(spans: list[tuple[int, int]], count: int, rng: random.Random, block: int) -> list[int]:
    """`count` distinct block offsets drawn evenly from `spans`, sorted."""
    starts, total = [], 0
    for lo, hi in spans:
        starts.append(total)
        total += hi - lo
    picks = []
    for n in sorted(rng.sample(range(total), min(count, total))):
        k = bisect.bisect_right(starts, n) - 1
        picks.append((spans[k][0] + n - starts[k]) * block)
    return picks


SOURCE_REVERTED = "source_reverted"  # how the resync reason of a disk whose source was reverted starts


def reverted(known: DiskState, disk: DiskInfo) -> str | None:
    """Why `disk` must be read whole because its source was reverted since `known`, or None.

    A revert makes vSphere continue the disk from a new redo log on the
    snapshot's layers, and CBT carries on from the tracking that snapshot
    froze: a change id from before the revert stays valid, and what it
    reports omits every block the revert changed back (VMware KB "Reverting
    to a pre-existing snapshot under specific conditions can cause
    incremental backups based on CBT to become inconsistent": a full backup
    after a revert is the cure). So the layer the last restore point was read
    from must still be in the backing chain of the snapshot read now; a
    revert leaves it out (the new redo log sits on the snapshot's parents).

    Conservative: removing the snapshot whose redo log was that layer merges
    the layer into its parent and also leaves it out, which costs a full
    read, never a wrong copy. Blind where it cannot see: a state written
    before the layer was recorded, and a layer name vSphere reused by a
    second revert within one interval (sampling, cbt_trust.py, remains).

    A Storage vMotion moves every layer of the chain to another datastore
    and keeps each layer's path inside it (and, from vSphere 6.0 on, the
    tracking data: change ids stay valid), so a layer found under the same
    path on the datastore the whole chain moved to is the same layer.
    """
    if known.source_layer is None or known.source_layer in disk.layers:
        return None
    if _moved(known.source_layer, disk.layers):
        return None
    return (
        f"{SOURCE_REVERTED}: {known.source_layer}, which the last restore point was read from, "
        f"is no longer in the disk's backing chain ({' <- '.join(disk.layers)}): the source was "
        "reverted to a snapshot, and CBT does not report the blocks a revert changes back"
    )


def _split(datastore_path: str) -> tuple[str, str]:
    """("ds", "dir/file.vmdk") of "[ds] dir/file.vmdk"."""
    datastore, _, path = datastore_path.partition("] ")
    return datastore.removeprefix("["), path


def _moved(layer: str, chain: tuple[str, ...]) -> bool:
    """Whether `layer` is in `chain` under its path, every layer of it now on another datastore."""
    datastore, path = _split(layer)
    places = [_split(link) for link in chain]
    return all(ds != datastore for ds, _ in places) and any(p == path for _, p in places)
