"""The replication state: what a replica mirrors, its restore points, the operations in flight.

Plain frozen dataclasses, and the invariants a committed state keeps
(`validate_state`, `validate_journal`). How they are written to and read
from a replica's extraConfig is codec.py (JSON, validated on read) and
store.py (the option keys, compare-and-swap writes under the lease).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from vsphere_replicator.display import Shown, ShownRows
from vsphere_replicator.errors import StateError
from vsphere_replicator.inventory import DiskInfo
from vsphere_replicator.replication.settings import CycleSettings, ReplicaTarget

POINT_ID = re.compile(r"^rp-(\d{6})$")
Phase = Literal["snapshot", "copying", "copied"]
RecoveryKind = Literal["planned", "unplanned", "failback"]
RecoveryPhase = Literal["begun", "source-off", "promoting", "reversing", "switching", "reprotecting"]


def point_id(number: int) -> str:
    """The id of the `number`-th restore point of a replica: rp-000001, rp-000002, ..."""
    return f"rp-{number:06d}"


@dataclass(frozen=True, slots=True)
class DiskState:
    """One source disk and the replica disk that mirrors it, as of the last restore point.

    `replica_uuid` is the replica disk's backing UUID: device keys are
    reused when disks come and go, a disk's UUID is not. `source_layer` is
    the source layer the restore point was read from (the file of the
    disk's backing in the source snapshot): the next cycle finds it in the
    disk's backing chain unless the source was reverted to a snapshot
    since. None in a state written before it was recorded.
    """

    source_key: int
    replica_key: int
    capacity: int
    change_id: str
    source_uuid: str | None
    replica_uuid: str | None = None
    source_layer: str | None = None

    @classmethod
    def frozen(cls, disk: DiskInfo, replica: DiskInfo | int, change_id: str | None = None) -> DiskState:
        """The state of `disk` as a source snapshot froze it, mirrored by `replica` (a disk or its key)."""
        chosen = change_id or disk.change_id
        if chosen is None:
            raise StateError(f"disk {disk.key} carries no change id: CBT is not tracking it")
        return cls(
            source_key=disk.key,
            replica_key=replica if isinstance(replica, int) else replica.key,
            capacity=disk.capacity,
            change_id=chosen,
            source_uuid=disk.uuid,
            replica_uuid=None if isinstance(replica, int) else replica.uuid,
            source_layer=disk.file_name,
        )


@dataclass(frozen=True, slots=True)
class RestorePoint(Shown):
    """A point-in-time copy of the source, held as a snapshot of the replica."""

    id: str
    snapshot: str
    created: datetime
    quiesced: bool
    bytes_moved: int
    bytes_changed: int
    digests: tuple[tuple[int, str], ...] = ()  # (replica disk key, BLAKE2b) when verified
    change_ids: tuple[tuple[int, str], ...] = ()  # (source disk key, its change id at this point)
    confirmed: datetime | None = None  # a later cycle found nothing changed: still the source's data then
    group: str | None = None  # the consistency group's cycle it was taken in, with its plan's other VMs

    _shown_columns = ("id", "created", "quiesced", "bytes_moved", "bytes_changed", "verified", "confirmed")

    @property
    def current_as_of(self) -> datetime:
        """Until when this point is known to hold the source's data (what the RPO is measured from)."""
        return self.confirmed or self.created

    @property
    def verified(self) -> bool:
        """Whether the point was made with verify (it carries digests to re-check it against)."""
        return bool(self.digests)


class RestorePoints(ShownRows, tuple[RestorePoint, ...]):
    """Restore points oldest first, as `list_restore_points` answers: a tuple shown as a table.

    `to_dataframe()` columns and dtypes: id, snapshot (string); created
    (datetime64[ns, UTC]); quiesced (bool); bytes_moved, bytes_changed
    (int64); verified (bool); confirmed (datetime64[ns, UTC], NaT when never
    confirmed); current_as_of (datetime64[ns, UTC]: what the RPO counts from).
    `vm` names the protected VM they belong to, when known (the table's caption shows it).
    """

    vm: str | None

    def __new__(cls, points: Iterable[RestorePoint] = (), *, vm: str | None = None) -> RestorePoints:
        self = super().__new__(cls, points)
        self.vm = vm
        return self

    _noun = ("restore point", "restore points")
    _frame_columns = (
        ("id", "string"),
        ("snapshot", "string"),
        ("created", "datetime64[ns, UTC]"),
        ("quiesced", "bool"),
        ("bytes_moved", "int64"),
        ("bytes_changed", "int64"),
        ("verified", "bool"),
        ("confirmed", "datetime64[ns, UTC]"),
        ("current_as_of", "datetime64[ns, UTC]"),
    )


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    moref: str
    name: str
    instance_uuid: str


@dataclass(frozen=True, slots=True)
class ReplicaState(Shown):
    """What a replica mirrors and which restore points it holds (oldest first)."""

    source: SourceIdentity
    replica_uuid: str
    target: ReplicaTarget
    settings: CycleSettings
    disks: tuple[DiskState, ...]
    restore_points: tuple[RestorePoint, ...]
    next_point: int
    promoted: bool = False
    last_error: str | None = None
    # Set by a failover: the restore point brought up, and the replica's change ids when it was,
    # from which failback reads what changed on the replica since.
    promoted_point: str | None = None
    failback_ids: tuple[tuple[int, str], ...] = ()

    _shown_title = "source"

    @property
    def latest(self) -> RestorePoint:
        return self.restore_points[-1]

    def disk(self, source_key: int) -> DiskState | None:
        return next((d for d in self.disks if d.source_key == source_key), None)

    def with_point(self, point: RestorePoint, disks: tuple[DiskState, ...]) -> ReplicaState:
        """This state with `point` committed as the newest restore point (numbered past it)."""
        match = POINT_ID.match(point.id)
        number = int(match.group(1)) if match else self.next_point
        return replace(
            self,
            disks=disks,
            restore_points=(*(p for p in self.restore_points if p.id != point.id), point),
            next_point=max(self.next_point, number + 1),
            last_error=None,
        )


@dataclass(frozen=True, slots=True)
class JournalDisk:
    """A disk's part of the cycle in flight: what is read, where it goes, how far it got.

    `done` counts the bytes of the cycle's chunk plan (Journal.chunk) that
    are copied and flushed; a resume follows that same plan.
    """

    source_key: int
    replica_key: int
    since: str
    capacity: int
    done: int = 0
    resync_reason: str | None = None
    replica_uuid: str | None = None
    change_id: str | None = None  # the source disk's change id at the cycle's snapshot: `since` next time
    source_uuid: str | None = None
    changed: int = 0  # bytes CBT reported changed (what the plan reads, before alignment)
    source_layer: str | None = None  # the source snapshot's layer this cycle reads: DiskState.source_layer

    def committed(self) -> DiskState:
        """The disk's state once this cycle's restore point is committed."""
        if self.change_id is None:
            raise StateError(f"the journal records no change id for disk {self.source_key}")
        return DiskState(
            source_key=self.source_key,
            replica_key=self.replica_key,
            capacity=self.capacity,
            change_id=self.change_id,
            source_uuid=self.source_uuid,
            replica_uuid=self.replica_uuid,
            source_layer=self.source_layer,
        )


@dataclass(frozen=True, slots=True)
class Journal:
    """The cycle in flight. `phase` moves snapshot -> copying -> copied; commit deletes it."""

    cycle: str
    phase: Phase
    source_snapshot: str | None
    started: datetime
    disks: tuple[JournalDisk, ...] = ()
    quiesced: bool = False
    restore_point: str | None = None
    retired: tuple[int, ...] = field(default=())
    chunk: int | None = None  # the read size the copy plan was cut with; a resume keeps it
    source_created: datetime | None = None  # when the source snapshot was taken: the point's time
    group: str | None = None  # a consistency group's cycle: its restore point carries it

    def with_disk(self, disk: JournalDisk) -> Journal:
        others = tuple(d for d in self.disks if d.source_key != disk.source_key)
        return replace(self, disks=tuple(sorted((*others, disk), key=lambda d: d.source_key)))

    def committed_point(
        self, snapshot: str, created: datetime, digests: tuple[tuple[int, str], ...] = ()
    ) -> tuple[RestorePoint, tuple[DiskState, ...]]:
        """The restore point this copied cycle makes as replica snapshot `snapshot`, and the disks' state.

        Everything comes from the journal, so a cycle whose source snapshot
        is gone still commits (and a point whose commit was lost to a
        revert can be recovered from the journal its snapshot saved).
        """
        if self.phase != "copied" or self.restore_point is None:
            raise StateError(
                f"cycle {self.cycle} is in phase {self.phase}: it has no restore point to commit"
            )
        disks = tuple(d.committed() for d in self.disks)
        point = RestorePoint(
            id=self.restore_point,
            snapshot=snapshot,
            created=self.source_created or created,
            quiesced=self.quiesced,
            bytes_moved=sum(d.done for d in self.disks),
            bytes_changed=sum(d.changed for d in self.disks),
            digests=digests,
            change_ids=tuple((d.source_key, d.change_id) for d in disks),
            group=self.group,
        )
        return point, disks


@dataclass(frozen=True, slots=True)
class RecoveryJournal:
    """A failover or failback in flight, kept on the replica it brings up (or reverses).

    Phases: a planned failover moves begun -> source-off -> promoting; an
    unplanned one begun -> promoting; a failback reversing -> switching ->
    reprotecting. The step that finishes the operation deletes it.
    """

    kind: RecoveryKind
    phase: RecoveryPhase
    started: datetime
    restore_point: str | None = None
    source_was_on: bool = False  # planned: the source ran when we began (we power it back on if we undo)
    snapshot: str | None = None  # failback: the promoted replica's snapshot the reverse copy reads

    @property
    def operation(self) -> str:
        """'planned failover', 'unplanned failover' or 'failback': for messages."""
        return "failback" if self.kind == "failback" else f"{self.kind} failover"


@dataclass(frozen=True, slots=True)
class SeedRecord:
    """What a seed clone is born with: enough to finish protecting after a crash.

    With `target`, `settings` and `created` it also rebuilds the state of
    the first restore point without the source: a revert of the replica to
    that point brings back this record, not the state committed after it.
    """

    source: SourceIdentity
    snapshot: str
    cycle: str
    change_ids: tuple[tuple[int, str], ...]
    quiesced: bool
    target: ReplicaTarget | None = None
    settings: CycleSettings | None = None
    created: datetime | None = None

    def first_state(
        self, replica: str, replica_uuid: str, point_snapshot: str, disks: tuple[DiskInfo, ...]
    ) -> ReplicaState:
        """The state right after the first restore point (`point_snapshot`, holding replica `disks`)."""
        if self.target is None or self.settings is None or self.created is None:
            raise StateError(f"{replica}'s seed record is too old to rebuild its state from", vm=replica)
        ids = dict(self.change_ids)
        ordered = sorted(disks, key=lambda d: (d.controller_key, d.unit_number or 0, d.key))
        if len(ordered) != len(ids):
            raise StateError(
                f"{replica} has {len(ordered)} disks where its seed recorded {len(ids)}", vm=replica
            )
        states = tuple(
            DiskState(
                source_key=key,
                replica_key=disk.key,
                capacity=disk.capacity,
                change_id=ids[key],
                source_uuid=None,
                replica_uuid=disk.uuid,
            )
            for key, disk in zip(sorted(ids), ordered, strict=True)
        )
        point = RestorePoint(
            id=point_id(1),
            snapshot=point_snapshot,
            created=self.created,
            quiesced=self.quiesced,
            bytes_moved=0,
            bytes_changed=0,
            change_ids=tuple((d.source_key, d.change_id) for d in states),
        )
        return ReplicaState(
            source=self.source,
            replica_uuid=replica_uuid,
            target=self.target,
            settings=self.settings,
            disks=states,
            restore_points=(point,),
            next_point=2,
        )


# -- invariants -------------------------------------------------------------------


def _invalid(vm: str | None, key: str, problem: str) -> StateError:
    return StateError(f"{vm or 'the replica'}'s state is inconsistent at key {key}: {problem}", vm=vm)


def validate_state(state: ReplicaState, vm: str | None = None) -> ReplicaState:
    """The invariants every committed state keeps; StateError naming the key that breaks one."""
    points = state.restore_points
    if not points:
        raise _invalid(vm, "restore_points", "a protected VM always has at least one restore point")
    ids = [p.id for p in points]
    for i, p in enumerate(points):
        if not POINT_ID.match(p.id):
            raise _invalid(vm, f"restore_points[{i}].id", f"{p.id!r} is not a restore point id")
    if len(set(ids)) != len(ids):
        raise _invalid(vm, "restore_points", f"restore point ids repeat: {', '.join(ids)}")
    if len({p.snapshot for p in points}) != len(points):
        raise _invalid(vm, "restore_points", "two restore points name the same snapshot")
    newest = max(int(p.id[3:]) for p in points)
    if state.next_point <= newest:
        raise _invalid(vm, "next_point", f"{state.next_point} is not past the newest point rp-{newest:06d}")
    if not state.disks:
        raise _invalid(vm, "disks", "no disk is replicated")
    for name in ("source_key", "replica_key"):
        keys = [getattr(d, name) for d in state.disks]
        if len(set(keys)) != len(keys):
            raise _invalid(vm, "disks", f"{name} values repeat: {keys}")
    if state.promoted_point is not None and state.promoted_point not in ids:
        raise _invalid(vm, "promoted_point", f"{state.promoted_point} is not one of its restore points")
    return state


def validate_journal(journal: Journal, vm: str | None = None) -> Journal:
    """A journal past its first phase names its snapshot, its disks and its restore point."""
    if journal.phase != "snapshot":
        if journal.source_snapshot is None:
            raise _invalid(vm, "journal.source_snapshot", f"phase {journal.phase} without a source snapshot")
        if not journal.disks:
            raise _invalid(vm, "journal.disks", f"phase {journal.phase} without any disk")
    if journal.restore_point is not None and not POINT_ID.match(journal.restore_point):
        raise _invalid(vm, "journal.restore_point", f"{journal.restore_point!r} is not a restore point id")
    keys = [d.source_key for d in journal.disks]
    if len(set(keys)) != len(keys):
        raise _invalid(vm, "journal.disks", f"source disks repeat: {keys}")
    for d in journal.disks:
        if not 0 <= d.done <= d.capacity:
            raise _invalid(vm, "journal.disks.done", f"{d.done} bytes done of a {d.capacity}-byte disk")
    return journal
