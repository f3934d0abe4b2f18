"""A policy from outside the library: one cycle a night at a configurable hour."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vsphere_replicator.policies import Engine, PolicyError, Throttle
from vsphere_replicator.replication.settings import CycleSettings, ReplicaTarget


@dataclass(frozen=True, slots=True)
class NightlySettings:
    hour: int


class NightlyPolicy:
    """Replicate once a day at `hour` (0-23) in the time zone of `now`."""

    def parse(self, raw: Mapping[str, Any]) -> NightlySettings:
        unknown = sorted(set(raw) - {"hour"})
        if unknown:
            raise PolicyError(f"unknown setting {unknown[0]!r}", key=unknown[0])
        hour = raw.get("hour", 2)
        if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23:
            raise PolicyError(f"hour must be a whole number from 0 to 23, not {hour!r}", key="hour")
        return NightlySettings(hour)

    def next_due(self, settings: NightlySettings, last_run: datetime | None, now: datetime) -> datetime:
        if last_run is None:
            return now
        due = last_run.replace(hour=settings.hour, minute=0, second=0, microsecond=0)
        return due if due > last_run else due + timedelta(days=1)

    def run(
        self,
        engine: Engine,
        vm: str,
        target: ReplicaTarget,
        settings: NightlySettings,
        throttle: Throttle | None,
    ) -> str:
        result = engine.replicate(vm, CycleSettings(), throttle)
        return f"nightly restore point {result.restore_point}"
