"""What a caller chooses about a replication: where the replica lives and how each cycle runs.

These are the plain-data inputs shared by the engine, the policy plugins
and the CLI; they are validated on construction so a bad value fails
before anything touches vCenter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from vsphere_replicator.errors import InvalidInput

QUIESCE_MODES = ("never", "try", "require")
PROVISIONING = ("thin", "thick-lazy", "thick-eager")
MAX_KEEP = 24  # restore points are replica snapshots: stay well inside vSphere's 32-level chain


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """Where a protected VM's replica lives on the secondary site.

    `networks` maps a source port group to the port group the replica's
    NICs move to on failover.
    """

    datastore: str
    host: str | None = None
    resource_pool: str | None = None
    folder: str | None = None
    provisioning: str = "thin"
    name: str = "{vm}-replica"
    networks: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.datastore:
            raise InvalidInput("a replica target needs a datastore")
        if self.provisioning not in PROVISIONING:
            raise InvalidInput(
                f"provisioning must be one of {', '.join(PROVISIONING)}, not {self.provisioning!r}"
            )
        if "{vm}" not in self.name:
            raise InvalidInput(f"replica name template {self.name!r} must contain {{vm}}")


@dataclass(frozen=True, slots=True)
class CycleSettings:
    """How one replication cycle runs and what it keeps.

    `keep` and `max_age` prune restore points (the newest always stays);
    `max_change_share` refuses an incremental that would move more than
    that share of a disk; `sample_areas` is how many areas CBT calls
    unchanged are compared between source and replica each cycle;
    `verify` compares every byte of the new restore point with the source
    snapshot and records its digest, so it can be checked again later;
    `target_rpo` is what status reports compliance against.
    """

    quiesce: str = "never"
    keep: int = 5
    max_age: timedelta | None = None
    max_change_share: float | None = None
    sample_areas: int = 8
    verify: bool = False
    target_rpo: timedelta | None = None

    def __post_init__(self) -> None:
        if self.quiesce not in QUIESCE_MODES:
            raise InvalidInput(f"quiesce must be one of {', '.join(QUIESCE_MODES)}, not {self.quiesce!r}")
        if not 1 <= self.keep <= MAX_KEEP:
            raise InvalidInput(f"keep must be between 1 and {MAX_KEEP} restore points, not {self.keep}")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise InvalidInput(f"max_age must be positive, not {self.max_age}")
        if self.max_change_share is not None and not 0 < self.max_change_share <= 1:
            raise InvalidInput(f"max_change_share must be in (0, 1], not {self.max_change_share}")
        if self.target_rpo is not None and self.target_rpo <= timedelta(0):
            raise InvalidInput(f"target_rpo must be positive, not {self.target_rpo}")
        if not 0 <= self.sample_areas <= 1024:
            raise InvalidInput(f"sample_areas must be between 0 and 1024, not {self.sample_areas}")


def apply_overrides(settings: CycleSettings, overrides: Mapping[str, Any] | None) -> CycleSettings:
    """`settings` with some values changed for one run; an unknown name is InvalidInput."""
    if not overrides:
        return settings
    known = {f.name for f in fields(CycleSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInput(f"unknown cycle settings {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return replace(settings, **overrides)


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle did: the restore point it made (or confirmed) and the bytes behind it."""

    vm: str
    replica: str
    restore_point: str
    created: datetime
    quiesced: bool
    bytes_changed: int
    bytes_moved: int
    full_resync: tuple[int, ...]
    resumed: bool
    seconds: float
    confirmed: bool = False  # nothing had changed: `restore_point` is the existing newest one
