"""What a caller chooses about a replication: where the replica lives and how each cycle runs.

These are the plain-data inputs shared by the engine, the policy plugins
and the CLI; they are validated on construction so a bad value fails
before anything touches vCenter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from vsphere_replicator.checks import (
    check_callable,
    check_choice,
    check_duration,
    check_fraction,
    check_has,
    check_int,
    check_text,
    check_type,
    shown,
)
from vsphere_replicator.clone import ClonePlacement
from vsphere_replicator.customize import RecoveryIp
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import PROVISIONING, Provisioning

QuiesceMode = Literal["never", "try", "require"]
QUIESCE_MODES: tuple[QuiesceMode, ...] = get_args(QuiesceMode)
MAX_KEEP = 24  # restore points are replica snapshots: stay well inside vSphere's 32-level chain
# Bytes per read: whole CBT blocks (64 KiB, the granularity vCenter reports changes in) and no more
# than plan_chunks accepts; a checkpoint covers at least one chunk; reads in flight per disk.
CHUNK_UNIT = 64 << 10
MAX_CHUNK = 64 << 20
MAX_CHECKPOINT = 1 << 40
MAX_WORKERS = 64
_DISK_ACCESS = ("check", "source", "sink")


@dataclass(frozen=True, slots=True)
class PlanMembership(Shown):
    """A protected VM's place in a recovery plan: the plan, its tier, and how the plan recovers.

    Recorded with each replica (on the recovery site), so a plan fails over
    from the target vCenter alone. Tier 1 comes up first; a tier starts once
    every VM of the one before runs VMware Tools (`wait="tools"`) or after
    `delay_seconds` (`wait="delay"`). With `consistency_group` the plan's
    VMs are replicated together, their snapshots taken in one short window,
    and a recovery brings every VM up at restore points of one such window.
    """

    name: str
    tier: int = 1
    consistency_group: bool = False
    wait: Literal["tools", "delay"] = "tools"
    delay_seconds: float = 0.0

    def __post_init__(self) -> None:
        check_text(self.name, "the recovery plan's name")
        if not isinstance(self.tier, int) or isinstance(self.tier, bool) or not 1 <= self.tier <= 100:
            raise InvalidInput(f"a recovery plan's tier is a number from 1 to 100, not {shown(self.tier)}")
        check_type(self.consistency_group, bool, "consistency_group")
        check_choice(self.wait, ("tools", "delay"), "wait")
        if not isinstance(self.delay_seconds, int | float) or not 0 <= self.delay_seconds <= 3600:
            raise InvalidInput(f"delay_seconds is from 0 to 3600, not {shown(self.delay_seconds)}")


@dataclass(frozen=True, slots=True)
class ReplicaTarget(Shown):
    """Where a protected VM's replica lives on the secondary site.

    `networks` maps a source port group to the port group the replica's
    NICs move to on failover; `recovery_ip` re-addresses it there (guest
    customization before it is powered on, in a failover or a test).
    """

    datastore: str
    host: str | None = None
    resource_pool: str | None = None
    folder: str | None = None
    provisioning: Provisioning = "thin"
    name: str = "{vm}-replica"
    networks: tuple[tuple[str, str], ...] = ()
    recovery_ip: RecoveryIp | None = None  # the replica's addresses once it runs on the recovery site
    plan: PlanMembership | None = None  # the recovery plan it fails over with, and in which tier

    def placement(self, *, provisioning: bool = True) -> ClonePlacement:
        """Where a clone for this target goes (a test copy keeps the source's provisioning)."""
        return ClonePlacement(
            datastore=self.datastore,
            host=self.host,
            resource_pool=self.resource_pool,
            folder=self.folder,
            provisioning=self.provisioning if provisioning else None,
        )

    def __post_init__(self) -> None:
        if self.datastore is None or self.datastore == "":
            raise InvalidInput("a replica target needs a datastore")
        check_text(self.datastore, "datastore")
        for name in ("host", "resource_pool", "folder"):
            check_text(getattr(self, name), name, optional=True)
        check_type(self.provisioning, str, "provisioning")
        check_type(self.name, str, "the replica name template")
        check_type(self.networks, tuple, "networks (a tuple of (source, recovery) port group pairs)")
        for pair in self.networks:
            if not (
                isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)
            ):
                raise InvalidInput(
                    f"each network mapping must be a (source, recovery) pair of names, not {shown(pair)}"
                )
        check_choice(self.provisioning, PROVISIONING, "provisioning")
        check_type(self.recovery_ip, RecoveryIp, "recovery_ip", optional=True)
        check_type(self.plan, PlanMembership, "plan", optional=True)
        if "{vm}" not in self.name:
            raise InvalidInput(f"replica name template {self.name!r} must contain {{vm}}")


@dataclass(frozen=True, slots=True)
class CycleSettings(Shown):
    """How one replication cycle runs and what it keeps.

    `keep` and `max_age` prune restore points (the newest always stays);
    `max_change_share` refuses an incremental that would move more than
    that share of a disk; `sample_areas` is how many areas CBT calls
    unchanged are compared between source and replica each cycle;
    `verify` compares every byte of the new restore point with the source
    snapshot and records its digest, so it can be checked again later;
    `target_rpo` is what status reports compliance against.
    """

    quiesce: QuiesceMode = "never"
    keep: int = 5
    max_age: timedelta | None = None
    max_change_share: float | None = None
    sample_areas: int = 8
    verify: bool = False
    target_rpo: timedelta | None = None

    def __post_init__(self) -> None:
        check_choice(self.quiesce, QUIESCE_MODES, "quiesce")
        check_int(self.keep, "keep", 1, MAX_KEEP, unit="restore points")
        check_duration(self.max_age, "max_age", optional=True)
        if self.max_change_share is not None:
            check_fraction(self.max_change_share, "max_change_share")
        check_duration(self.target_rpo, "target_rpo", optional=True)
        check_int(self.sample_areas, "sample_areas", 0, 1024)
        check_type(self.verify, bool, "verify")


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
class CycleResult(Shown):
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
    # Why each disk of `full_resync` was read whole: (source disk key, reason), e.g. a reason
    # starting with "source_reverted" when the source was reverted to a snapshot since the last cycle.
    resync_reasons: tuple[tuple[int, str], ...] = ()


def check_transfer(*, chunk: object, checkpoint_every: object, workers: object) -> None:
    """Raise InvalidInput unless a cycle's transfer options are sane; called before anything is done.

    `chunk` (bytes per read) is a multiple of 64 KiB up to 64 MiB; `checkpoint_every`
    (bytes between journal checkpoints) at least one chunk and at most 1 TiB;
    `workers` (reads in flight) 1 to 64.
    """
    size = check_int(chunk, "chunk", CHUNK_UNIT, MAX_CHUNK, unit="bytes")
    if size % CHUNK_UNIT:
        raise InvalidInput(f"chunk must be a multiple of 64 KiB ({CHUNK_UNIT} bytes), not {size}")
    # At least one chunk: a checkpoint is taken after whole chunks.
    check_int(checkpoint_every, "checkpoint_every", size, MAX_CHECKPOINT, unit="bytes")
    check_int(workers, "workers", 1, MAX_WORKERS)


def check_cycle_arguments(
    *,
    settings: object,
    replica_access: object,
    source_access: object,
    verify_access: object = None,
    overrides: object = None,
    throttle: object = None,
    on_progress: object = None,
    replica_required: bool = True,
) -> None:
    """replicate's and protect's other arguments: the right types, or InvalidInput before any vCenter call."""
    check_type(settings, CycleSettings, "settings", optional=True)
    if overrides is not None:
        check_type(overrides, Mapping, "overrides")
        assert isinstance(overrides, Mapping)
        apply_overrides(CycleSettings(), overrides)  # names and values checked as for the recorded ones
    if replica_access is not None or replica_required:
        check_has(
            replica_access, _DISK_ACCESS, "replica_access", "DiskAccess (MountedDatastores, NBDDisks, ...)"
        )
    for name, access in (("source_access", source_access), ("verify_access", verify_access)):
        if access is not None:
            check_has(access, _DISK_ACCESS, name, "DiskAccess (HTTPDatastores, NBDDisks, ...)")
    check_callable(throttle, "throttle", optional=True)
    check_callable(on_progress, "on_progress", optional=True)


def check_protect_arguments(
    *, target: object, settings: object, replica_access: object, source_access: object
) -> None:
    """protect's arguments (the VMs are checked where they are resolved): InvalidInput before any call."""
    check_type(target, ReplicaTarget, "target")
    check_cycle_arguments(
        settings=settings, replica_access=replica_access, source_access=source_access, replica_required=False
    )
