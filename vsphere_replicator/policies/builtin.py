"""The built-in policies: point-in-time, continuous and clone.

Settings (durations like "15m", "1h30m"; cron is 5 fields, in the runner's local time):

- point-in-time: exactly one of `interval` or `cron`; `keep` (1-24, default 5),
  `max_age`, `quiesce` (never/try/require), `max_change_share` (0-1], `verify`.
- continuous: `target_rpo` (required), and the same `keep` ... `verify`.
- clone: exactly one of `interval` or `cron`; `keep` (1-50, required);
  `name` (default "{vm}-clone-{date}{time}", UTC stamps).

They are registered through the library's own entry points, like any
plugin. `SettingsReader` and `Schedule` are public so a third-party policy
can validate its settings the same way and report every problem at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from string import Formatter
from typing import Any, TypeVar

from croniter import croniter  # type: ignore[import-untyped]  # croniter ships no type information

from vsphere_replicator.errors import InvalidInput, PolicyError
from vsphere_replicator.policies.base import Engine
from vsphere_replicator.replication.settings import (
    MAX_KEEP,
    QUIESCE_MODES,
    CycleResult,
    CycleSettings,
    ReplicaTarget,
)
from vsphere_replicator.transport.throttle import Throttle
from vsphere_replicator.units import format_duration, parse_duration

C = TypeVar("C", bound=str)

__all__ = [
    "MAX_CLONES",
    "ClonePolicy",
    "CloneSettings",
    "ContinuousPolicy",
    "ContinuousSettings",
    "PointInTimePolicy",
    "PointInTimeSettings",
    "Schedule",
    "SettingsReader",
]

MAX_CLONES = 50  # each clone is a full copy of the VM: a larger count is far more likely a typo than a plan
CLONE_NAME = "{vm}-clone-{date}{time}"
_DEFAULT_CYCLE = CycleSettings()


def _cron_next(expression: str, after: datetime) -> datetime:
    nxt: datetime = croniter(expression, after).get_next(datetime)
    return nxt


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a scheduled policy is due: every `interval` or at the times of a 5-field `cron` expression.

    Cron is evaluated in the time zone of the datetimes it is given (the
    runner's `now`, local time by default). A VM that missed several slots
    (the runner was down) runs once, then resumes the schedule — no catch-up
    storm.
    """

    interval: timedelta | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.interval is None) == (self.cron is None):
            raise PolicyError("a schedule needs exactly one of interval or cron")

    def next_due(self, last_run: datetime | None, now: datetime) -> datetime:
        """`now` when never run; otherwise the first slot after the start of the last run."""
        if last_run is None:
            return now
        if self.interval is not None:
            return last_run + self.interval
        assert self.cron is not None  # __post_init__ guarantees one of the two
        return _cron_next(self.cron, last_run)

    def describe(self) -> str:
        return (
            f"every {format_duration(self.interval)}" if self.interval is not None else f"cron {self.cron!r}"
        )


class SettingsReader:
    """Reads a raw settings mapping key by key, collecting every problem before raising.

    Each accessor records a problem and returns a harmless placeholder when a
    value is wrong; `finish()` then raises one PolicyError whose `problems`
    name every bad key (and every unknown one), so a policy file shows them all.
    """

    def __init__(self, raw: Mapping[str, Any], policy: str) -> None:
        self._raw = raw
        self._policy = policy
        self._read: set[str] = set()
        self._problems: list[tuple[str | None, str]] = []

    def problem(self, key: str | None, reason: str) -> None:
        self._problems.append((key, reason))

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self._raw.get(key)

    def has(self, key: str) -> bool:
        return self._raw.get(key) is not None

    def duration(self, key: str, *, required: bool = False) -> timedelta | None:
        value = self._get(key)
        if value is None:
            if required:
                self.problem(None, f"{key} is required (a duration such as 15m)")
            return None
        try:
            return parse_duration(value)
        except InvalidInput as exc:
            self.problem(key, f"{key}: {exc}")
            return None

    def integer(self, key: str, *, default: int | None, low: int, high: int) -> int:
        """A whole number in [low, high]; `default=None` makes it required."""
        value = self._get(key)
        if value is None:
            if default is None:
                self.problem(None, f"{key} is required (a whole number from {low} to {high})")
            return default if default is not None else low
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"{key} must be a whole number, not {value!r}")
            return low
        if not low <= value <= high:
            self.problem(key, f"{key} must be between {low} and {high}, not {value}")
            return low
        return value

    def share(self, key: str) -> float | None:
        """A fraction in (0, 1], or None when absent."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"{key} must be a number between 0 and 1, not {value!r}")
            return None
        if not 0 < value <= 1:
            self.problem(key, f"{key} must be more than 0 and at most 1, not {value}")
            return None
        return float(value)

    def choice(self, key: str, choices: tuple[C, ...], *, default: C) -> C:
        value = self._get(key)
        if value is None:
            return default
        for choice in choices:
            if isinstance(value, str) and value == choice:
                return choice
        hint = " (YAML reads a bare yes/no/on/off as a boolean)" if isinstance(value, bool) else ""
        self.problem(key, f"{key} must be one of {', '.join(choices)}, not {value!r}{hint}")
        return default

    def text(self, key: str, *, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.problem(key, f"{key} must be a non-empty string, not {value!r}")
            return default
        return value

    def cron(self, key: str) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value.split()) != 5 or not croniter.is_valid(value):
            self.problem(
                key, f"{key} must be a 5-field cron expression (minute hour day month weekday), not {value!r}"
            )
            return None
        return " ".join(value.split())

    def schedule(self) -> Schedule | None:
        """Exactly one of `interval` or `cron`; None (and a problem) otherwise."""
        both = self.has("interval") and self.has("cron")
        interval = self.duration("interval")
        cron = self.cron("cron")
        if both:
            self.problem("cron", "give either interval or cron, not both")
            return None
        if not (self.has("interval") or self.has("cron")):
            self.problem(None, "a schedule is required: interval (e.g. 15m) or cron (e.g. '0 2 * * *')")
            return None
        if interval is None and cron is None:
            return None
        return Schedule(interval=interval, cron=cron)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"{key} must be true or false, not {value!r}")
            return default
        return value

    def cycle(self, *, target_rpo: timedelta | None = None) -> CycleSettings:
        """keep, max_age, quiesce, max_change_share and verify: the settings every replicating policy shares.

        `target_rpo` is not read here: it is the policy's to derive, and the
        engine reports RPO compliance against it.
        """
        keep = self.integer("keep", default=_DEFAULT_CYCLE.keep, low=1, high=MAX_KEEP)
        max_age = self.duration("max_age")
        quiesce = self.choice("quiesce", QUIESCE_MODES, default=_DEFAULT_CYCLE.quiesce)
        share = self.share("max_change_share")
        verify = self.boolean("verify", default=_DEFAULT_CYCLE.verify)
        try:
            return CycleSettings(
                quiesce=quiesce,
                keep=keep,
                max_age=max_age,
                max_change_share=share,
                verify=verify,
                target_rpo=target_rpo,
            )
        except InvalidInput as exc:  # the checks above mirror these; this keeps the two from drifting apart
            self.problem(None, str(exc))
            return CycleSettings()

    def finish(self) -> None:
        """Raise one PolicyError for every problem found and every key nobody read."""
        for key in self._raw:
            if key not in self._read:
                self.problem(key, f"unknown setting {key!r} for policy {self._policy!r}")
        if self._problems:
            first = self._problems[0][0] if len(self._problems) == 1 else None
            raise PolicyError(
                "; ".join(reason for _, reason in self._problems), key=first, problems=self._problems
            )


def _cycle_summary(result: CycleResult, seeded: bool) -> str:
    if result.confirmed:
        return f"nothing changed: restore point {result.restore_point} on {result.replica} confirmed current"
    kind = "seeded" if seeded else "incremental"
    consistency = "quiesced" if result.quiesced else "crash-consistent"
    resync = (
        f", full resync of disk(s) {', '.join(map(str, result.full_resync))}" if result.full_resync else ""
    )
    return (
        f"restore point {result.restore_point} on {result.replica} ({kind}, {consistency}, "
        f"{result.bytes_moved} of {result.bytes_changed} changed bytes moved "
        f"in {result.seconds:.1f}s{resync})"
    )


def _replicate(
    engine: Engine, vm: str, target: ReplicaTarget, cycle: CycleSettings, throttle: Throttle | None
) -> tuple[CycleResult, bool]:
    """Seed the replica on the first cycle, replicate incrementally after; answer (result, seeded)."""
    if not engine.is_protected(vm):
        return engine.protect(vm, target, cycle), True
    return engine.replicate(vm, cycle, throttle), False


@dataclass(frozen=True, slots=True)
class PointInTimeSettings:
    """A restore point per scheduled run."""

    schedule: Schedule
    cycle: CycleSettings


class PointInTimePolicy:
    """point-in-time: one replication cycle per slot of a schedule (interval or cron)."""

    def parse(self, raw: Mapping[str, Any]) -> PointInTimeSettings:
        reader = SettingsReader(raw, "point-in-time")
        schedule = reader.schedule()
        cycle = reader.cycle()
        reader.finish()
        assert schedule is not None  # finish() raised otherwise
        return PointInTimeSettings(schedule=schedule, cycle=cycle)

    def next_due(self, settings: PointInTimeSettings, last_run: datetime | None, now: datetime) -> datetime:
        return settings.schedule.next_due(last_run, now)

    def run(
        self,
        engine: Engine,
        vm: str,
        target: ReplicaTarget,
        settings: PointInTimeSettings,
        throttle: Throttle | None,
    ) -> str:
        result, seeded = _replicate(engine, vm, target, settings.cycle, throttle)
        return _cycle_summary(result, seeded)


@dataclass(frozen=True, slots=True)
class ContinuousSettings:
    """Back-to-back cycles aiming to keep the replica within `target_rpo` of the source."""

    target_rpo: timedelta
    cycle: CycleSettings


class ContinuousPolicy:
    """continuous: near-real-time replication, a new cycle as soon as the previous one finished.

    The runner never overlaps two cycles of one VM, so "always due" means
    "due once the last cycle finished". Each summary reports the lag the
    cycle left (its duration: how old the restore point was when it became
    usable) against `target_rpo`.
    """

    def parse(self, raw: Mapping[str, Any]) -> ContinuousSettings:
        reader = SettingsReader(raw, "continuous")
        target_rpo = reader.duration("target_rpo", required=True)
        cycle = reader.cycle(target_rpo=target_rpo)
        reader.finish()
        assert target_rpo is not None  # finish() raised otherwise
        return ContinuousSettings(target_rpo=target_rpo, cycle=cycle)

    def next_due(self, settings: ContinuousSettings, last_run: datetime | None, now: datetime) -> datetime:
        return now

    def run(
        self,
        engine: Engine,
        vm: str,
        target: ReplicaTarget,
        settings: ContinuousSettings,
        throttle: Throttle | None,
    ) -> str:
        result, seeded = _replicate(engine, vm, target, settings.cycle, throttle)
        lag = timedelta(seconds=result.seconds)
        verdict = "within" if lag <= settings.target_rpo else "MISSED"
        return f"{_cycle_summary(result, seeded)}; lag {lag.total_seconds():.1f}s {verdict} target RPO " + (
            format_duration(settings.target_rpo)
        )


@dataclass(frozen=True, slots=True)
class CloneSettings:
    """Scheduled full clones; `name` is a template over {vm}, {date} (YYYYMMDD) and {time} (HHMMSS, UTC)."""

    schedule: Schedule
    keep: int
    name: str


def _template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in Formatter().parse(template) if field is not None}


class ClonePolicy:
    """clone: a full, powered-off clone of the VM per scheduled slot; the engine keeps the newest `keep`.

    `now` (UTC) stamps the clone names and is injectable for tests.
    """

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now

    def parse(self, raw: Mapping[str, Any]) -> CloneSettings:
        reader = SettingsReader(raw, "clone")
        schedule = reader.schedule()
        keep = reader.integer("keep", default=None, low=1, high=MAX_CLONES)
        name = reader.text("name", default=CLONE_NAME)
        try:
            fields = _template_fields(name)
        except ValueError as exc:
            reader.problem("name", f"name template {name!r} is malformed: {exc}")
        else:
            if not fields <= {"vm", "date", "time"}:
                unknown = ", ".join(sorted(fields - {"vm", "date", "time"}))
                reader.problem(
                    "name", f"name template {name!r} may use only {{vm}}, {{date}}, {{time}}: {unknown}"
                )
            elif "vm" not in fields or not fields & {"date", "time"}:
                reader.problem(
                    "name", f"name template {name!r} needs {{vm}} and {{date}} or {{time}} to be unique"
                )
        reader.finish()
        assert schedule is not None  # finish() raised otherwise
        return CloneSettings(schedule=schedule, keep=keep, name=name)

    def next_due(self, settings: CloneSettings, last_run: datetime | None, now: datetime) -> datetime:
        return settings.schedule.next_due(last_run, now)

    def run(
        self,
        engine: Engine,
        vm: str,
        target: ReplicaTarget,
        settings: CloneSettings,
        throttle: Throttle | None,
    ) -> str:
        stamp = self._now().astimezone(UTC)
        name = settings.name.format(vm=vm, date=stamp.strftime("%Y%m%d"), time=stamp.strftime("%H%M%S"))
        clone = engine.clone(vm, target, settings.keep, name)
        return f"clone {clone} on {target.datastore} (keeping {settings.keep})"
