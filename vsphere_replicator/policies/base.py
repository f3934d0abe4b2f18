"""The contracts of the policy layer: what a policy plugin implements and what it may ask of the engine.

A policy turns a few settings from a policy file into replication cycles:
`parse` validates the settings once, before anything runs; `next_due` says
when a VM is due again; `run` does one cycle through the `Engine`. The
engine is the only thing that talks to vCenter, so a policy can be tested
with an in-memory engine and never sees a pyVmomi object.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from vsphere_replicator.checks import shown
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.replication.settings import CycleResult, CycleSettings, ReplicaTarget
from vsphere_replicator.transport.throttle import Throttle

__all__ = ["Engine", "Policy", "Selection"]

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Selection(Shown):
    """Which VMs a protection covers.

    Within one criterion any entry may match; every criterion that is given
    must match. `names` are fnmatch globs (case-sensitive, as vCenter names
    are); `folders` are inventory paths ("DC0/vm/web") and include their
    subfolders; `tags` are "category:tag" and a VM needs one of them.
    """

    names: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("names", "folders", "tags"):
            value = getattr(self, name)
            # A bare string would be read letter by letter: "web-*" selecting VMs named "w", "e", ...
            if not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
                raise InvalidInput(f"selection {name} must be a tuple of strings, not {shown(value)}")

    def matches(self, vm: str, folder: str | None = None, tags: Iterable[str] = ()) -> bool:
        """Whether a VM with this name, folder path and tags is selected; engines may use it as the rule."""
        if not (self.names or self.folders or self.tags):
            return False
        if self.names and not any(fnmatch.fnmatchcase(vm, pattern) for pattern in self.names):
            return False
        if self.folders:
            path = (folder or "").rstrip("/")
            if not any(path == f or path.startswith(f + "/") for f in self.folders):
                return False
        return not self.tags or bool(set(self.tags) & set(tags))


class Engine(Protocol):
    """What policies and the runner need from the replication engine; `LiveEngine` is the one over vCenter.

    Every method raises a `ReplicatorError` subclass on failure. `select`
    answers VM names; `placement` answers the VM's (host, source datastores)
    so the runner can hold per-host and per-datastore limits.
    """

    def select(self, selection: Selection) -> list[str]: ...

    def placement(self, vm: str) -> tuple[str, tuple[str, ...]]: ...

    def is_protected(self, vm: str) -> bool: ...

    def protect(self, vm: str, target: ReplicaTarget, cycle: CycleSettings) -> CycleResult: ...

    def replicate(self, vm: str, cycle: CycleSettings, throttle: Throttle | None) -> CycleResult: ...

    def clone(self, vm: str, target: ReplicaTarget, keep: int, name: str) -> str: ...


@runtime_checkable
class Policy(Protocol[S]):
    """A replication policy plugin, registered under the entry-point group `vsphere_replicator.policies`.

    The entry point names a class; the registry instantiates it without
    arguments. `S` is the policy's settings type, a frozen dataclass.
    """

    def parse(self, raw: Mapping[str, Any]) -> S:
        """Validate raw settings from a policy file; raise PolicyError with `key` (or `problems`)."""
        ...

    def next_due(self, settings: S, last_run: datetime | None, now: datetime) -> datetime:
        """When the VM is next due; `last_run` is when its last cycle started, None if never (due now)."""
        ...

    def run(
        self, engine: Engine, vm: str, target: ReplicaTarget, settings: S, throttle: Throttle | None
    ) -> str:
        """Run one cycle for `vm` and answer a one-line summary; failures raise."""
        ...
