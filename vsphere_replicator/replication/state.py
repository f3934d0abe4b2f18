"""The replication state, kept with the replica itself in its extraConfig.

Two options: STATE_KEY is the committed state (source identity, per-disk
change ids, restore points); JOURNAL_KEY is the cycle in flight, if any.
A cycle commits by writing the new state and clearing the journal in one
ReconfigVM_Task, so any machine can read where a replication stands and
carry on. Both are JSON, small (a few KiB), and versioned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pyVmomi import vim

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import InvalidInput, ReplicatorError
from vsphere_replicator.inventory import DiskInfo, vm_object, vm_options
from vsphere_replicator.replication.settings import CycleSettings, ReplicaTarget
from vsphere_replicator.tasks import run_task

PREFIX = "vsphere_replicator."
STATE_KEY = PREFIX + "state"
JOURNAL_KEY = PREFIX + "journal"
SEED_KEY = PREFIX + "seed"
VERSION = 1


class StateError(ReplicatorError):
    """The replication state on a replica is missing, unreadable or contradicts vCenter."""


@dataclass(frozen=True, slots=True)
class DiskState:
    """One source disk and the replica disk that mirrors it, as of the last restore point."""

    source_key: int
    replica_key: int
    capacity: int
    change_id: str
    source_uuid: str | None

    @classmethod
    def frozen(cls, disk: DiskInfo, replica_key: int, change_id: str | None = None) -> DiskState:
        """The state of `disk` as a source snapshot froze it, mirrored by replica disk `replica_key`."""
        chosen = change_id or disk.change_id
        if chosen is None:
            raise StateError(f"disk {disk.key} carries no change id: CBT is not tracking it")
        return cls(
            source_key=disk.key,
            replica_key=replica_key,
            capacity=disk.capacity,
            change_id=chosen,
            source_uuid=disk.uuid,
        )


@dataclass(frozen=True, slots=True)
class RestorePoint:
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

    @property
    def current_as_of(self) -> datetime:
        """Until when this point is known to hold the source's data (what the RPO is measured from)."""
        return self.confirmed or self.created


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    moref: str
    name: str
    instance_uuid: str


@dataclass(frozen=True, slots=True)
class ReplicaState:
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

    @property
    def latest(self) -> RestorePoint:
        return self.restore_points[-1]

    def disk(self, source_key: int) -> DiskState | None:
        return next((d for d in self.disks if d.source_key == source_key), None)


@dataclass(frozen=True, slots=True)
class JournalDisk:
    """A disk's part of the cycle in flight: what is read, where it goes, how far it got."""

    source_key: int
    replica_key: int
    since: str
    capacity: int
    done: int = 0
    resync_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Journal:
    """The cycle in flight. `phase` moves snapshot -> copying -> copied; commit deletes it."""

    cycle: str
    phase: str
    source_snapshot: str | None
    started: datetime
    disks: tuple[JournalDisk, ...] = ()
    quiesced: bool = False
    restore_point: str | None = None
    retired: tuple[int, ...] = field(default=())

    def with_disk(self, disk: JournalDisk) -> Journal:
        others = tuple(d for d in self.disks if d.source_key != disk.source_key)
        return replace(self, disks=tuple(sorted((*others, disk), key=lambda d: d.source_key)))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    return value


def encode_state(state: ReplicaState) -> str:
    return json.dumps({"v": VERSION, **_plain(asdict(state))}, separators=(",", ":"), sort_keys=True)


def encode_journal(journal: Journal) -> str:
    return json.dumps({"v": VERSION, **_plain(asdict(journal))}, separators=(",", ":"), sort_keys=True)


def _versioned(text: str, what: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"the replica's {what} is not valid JSON: {exc}") from exc
    if data.pop("v", None) != VERSION:
        raise StateError(f"the replica's {what} has an unknown version; upgrade vsphere_replicator")
    return data


def decode_state(text: str) -> ReplicaState:
    data = _versioned(text, "state")
    try:
        settings = dict(data["settings"])
        for name in ("max_age", "target_rpo"):
            if settings.get(name) is not None:
                settings[name] = timedelta(seconds=settings[name])
        target = dict(data["target"])
        target["networks"] = tuple(tuple(pair) for pair in target.get("networks", ()))
        return ReplicaState(
            source=SourceIdentity(**data["source"]),
            replica_uuid=data["replica_uuid"],
            target=ReplicaTarget(**target),
            settings=CycleSettings(**settings),
            disks=tuple(DiskState(**d) for d in data["disks"]),
            restore_points=tuple(
                RestorePoint(
                    **{
                        **r,
                        "created": datetime.fromisoformat(r["created"]),
                        "digests": tuple((int(k), str(d)) for k, d in r.get("digests", ())),
                        "change_ids": tuple((int(k), str(c)) for k, c in r.get("change_ids", ())),
                        "confirmed": datetime.fromisoformat(r["confirmed"]) if r.get("confirmed") else None,
                    }
                )
                for r in data["restore_points"]
            ),
            next_point=data["next_point"],
            promoted=data.get("promoted", False),
            last_error=data.get("last_error"),
            promoted_point=data.get("promoted_point"),
            failback_ids=tuple((int(k), str(c)) for k, c in data.get("failback_ids", ())),
        )
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise StateError(f"the replica's state is incomplete or malformed: {exc}") from exc


def decode_journal(text: str) -> Journal:
    data = _versioned(text, "journal")
    try:
        return Journal(
            cycle=data["cycle"],
            phase=data["phase"],
            source_snapshot=data["source_snapshot"],
            started=datetime.fromisoformat(data["started"]),
            disks=tuple(JournalDisk(**d) for d in data["disks"]),
            quiesced=data["quiesced"],
            restore_point=data["restore_point"],
            retired=tuple(data.get("retired", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"the replica's journal is incomplete or malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SeedRecord:
    """What a seed clone is born with: enough to finish protecting after a crash."""

    source: SourceIdentity
    snapshot: str
    cycle: str
    change_ids: tuple[tuple[int, str], ...]
    quiesced: bool


def seed_options(record: SeedRecord) -> dict[str, str]:
    """The options a seed clone is born with, so a crash mid-seed leaves a recognisable replica."""
    return {SEED_KEY: json.dumps({"v": VERSION, **asdict(record)}, separators=(",", ":"), sort_keys=True)}


def decode_seed(text: str) -> SeedRecord:
    data = _versioned(text, "seed record")
    try:
        return SeedRecord(
            source=SourceIdentity(**data["source"]),
            snapshot=data["snapshot"],
            cycle=data["cycle"],
            change_ids=tuple((int(k), str(c)) for k, c in data["change_ids"]),
            quiesced=bool(data["quiesced"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"the replica's seed record is malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """A VM carrying replication options, with what they say."""

    moref: str
    state: ReplicaState | None
    journal: Journal | None
    seed: SeedRecord | None


def find_replicas(conn: Connection) -> tuple[ReplicaRecord, ...]:
    """Every VM that carries replication options, in one inventory read."""
    records = []
    for moref, options in vm_options(conn, PREFIX).items():
        if STATE_KEY not in options and SEED_KEY not in options:
            continue  # our other marks (periodic clones) or a journal without a state: not a replica
        records.append(
            ReplicaRecord(
                moref=moref,
                state=decode_state(options[STATE_KEY]) if STATE_KEY in options else None,
                journal=decode_journal(options[JOURNAL_KEY]) if JOURNAL_KEY in options else None,
                seed=decode_seed(options[SEED_KEY]) if SEED_KEY in options else None,
            )
        )
    return tuple(records)


def cleared_options() -> dict[str, str]:
    """Options that, applied to a copy of a replica, strip every replication key from it."""
    return dict.fromkeys((STATE_KEY, JOURNAL_KEY, SEED_KEY), "")


def write_options(
    conn: Connection,
    replica_moref: str,
    *,
    state: ReplicaState | None = None,
    journal: Journal | None = None,
    clear_journal: bool = False,
    clear_seed: bool = False,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write state and/or journal (and `extra` raw options) in one reconfigure: atomic at vCenter."""
    options = [vim.option.OptionValue(key=k, value=v) for k, v in (extra or {}).items()]
    if state is not None:
        options.append(vim.option.OptionValue(key=STATE_KEY, value=encode_state(state)))
    if journal is not None:
        options.append(vim.option.OptionValue(key=JOURNAL_KEY, value=encode_journal(journal)))
    elif clear_journal:
        options.append(vim.option.OptionValue(key=JOURNAL_KEY, value=""))
    if clear_seed:
        options.append(vim.option.OptionValue(key=SEED_KEY, value=""))
    if not options:
        return
    handle = vm_object(conn, replica_moref)
    run_task(
        conn,
        lambda: handle.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=options)),
        what="record the replication state",
        vm=replica_moref,
    )
