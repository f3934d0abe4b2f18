"""The replication state as JSON in a replica's extraConfig: written compact, read back validated.

Decoding goes through a schema (pydantic over the state's own dataclasses,
unknown keys refused) and then the state's invariants, so a damaged option
is a StateError naming the replica and the offending key, never a
traceback or a half-read state.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pydantic

from vsphere_replicator.customize import NicAddress, RecoveryIp
from vsphere_replicator.errors import StateError
from vsphere_replicator.replication.settings import CycleSettings, PlanMembership, ReplicaTarget
from vsphere_replicator.replication.state import (
    DiskState,
    Journal,
    JournalDisk,
    RecoveryJournal,
    ReplicaState,
    RestorePoint,
    SeedRecord,
    SourceIdentity,
    validate_journal,
    validate_state,
)

VERSION = 1


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _encode(value: Any) -> str:
    return json.dumps({"v": VERSION, **_plain(asdict(value))}, separators=(",", ":"), sort_keys=True)


def encode_state(state: ReplicaState) -> str:
    return _encode(validate_state(state))


def encode_journal(journal: Journal) -> str:
    return _encode(validate_journal(journal))


T = TypeVar("T")
_STRICT = pydantic.ConfigDict(extra="forbid")
_ADAPTERS: dict[type[Any], pydantic.TypeAdapter[Any]] = {}


# An unknown key is damage (or a newer writer), never something to drop silently.
for _kind in (
    DiskState,
    RestorePoint,
    SourceIdentity,
    ReplicaState,
    JournalDisk,
    Journal,
    RecoveryJournal,
    SeedRecord,
    ReplicaTarget,
    CycleSettings,
    RecoveryIp,
    NicAddress,
    PlanMembership,
):
    setattr(_kind, "__pydantic_config__", _STRICT)  # noqa: B010 - a class attribute pydantic reads


def _adapter(kind: type[T]) -> pydantic.TypeAdapter[T]:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = pydantic.TypeAdapter(kind)
    return _ADAPTERS[kind]


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _decode(text: str, kind: type[T], what: str, vm: str | None) -> T:
    whose = f"{vm}'s {what}" if vm else f"the replica's {what}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{whose} is not valid JSON ({exc.msg} at character {exc.pos})", vm=vm) from exc
    except RecursionError as exc:
        raise StateError(f"{whose} is nested too deeply to be ours", vm=vm) from exc
    if not isinstance(data, dict):
        raise StateError(f"{whose} is not a JSON object but {type(data).__name__}", vm=vm)
    if data.pop("v", None) != VERSION:
        raise StateError(f"{whose} has an unknown version; upgrade vsphere_replicator", vm=vm)
    try:
        return _adapter(kind).validate_python(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise StateError(f"{whose} is malformed at key {_where(first['loc'])}: {message}", vm=vm) from exc


def decode_state(text: str, vm: str | None = None) -> ReplicaState:
    return validate_state(_decode(text, ReplicaState, "state", vm), vm)


def decode_journal(text: str, vm: str | None = None) -> Journal:
    return validate_journal(_decode(text, Journal, "journal", vm), vm)


def decode_seed(text: str, vm: str | None = None) -> SeedRecord:
    return _decode(text, SeedRecord, "seed record", vm)


def decode_recovery(text: str, vm: str | None = None) -> RecoveryJournal:
    return _decode(text, RecoveryJournal, "failover journal", vm)


def encode_recovery(journal: RecoveryJournal) -> str:
    return _encode(journal)


def encode_seed(record: SeedRecord) -> str:
    return _encode(record)
