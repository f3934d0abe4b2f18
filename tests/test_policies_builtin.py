"""The built-in policies against an in-memory engine: what each parses, when it is due, what it asks for."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import vsphere_replicator.policies as policies
from vsphere_replicator.policies import (
    ClonePolicy,
    ContinuousPolicy,
    PointInTimePolicy,
    PolicyError,
    Schedule,
    Selection,
    SettingsReader,
    Throttle,
)
from vsphere_replicator.replication.settings import CycleResult, CycleSettings, ReplicaTarget

T0 = datetime(2025, 3, 1, 10, 7, 30, tzinfo=UTC)
TARGET = ReplicaTarget(datastore="secondary-ds")


class Engine:
    """Records what a policy asks for; a VM becomes protected by its first `protect`."""

    def __init__(self, seconds: float = 2.0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.protected: set[str] = set()
        self.seconds = seconds

    def select(self, selection: Selection) -> list[str]:
        raise AssertionError("policies do not select")

    def placement(self, vm: str) -> tuple[str, tuple[str, ...]]:
        raise AssertionError("policies do not place")

    def is_protected(self, vm: str) -> bool:
        return vm in self.protected

    def _result(self, vm: str) -> CycleResult:
        return CycleResult(
            vm=vm,
            replica=f"{vm}-replica",
            restore_point=f"rp-{len(self.calls)}",
            created=T0,
            quiesced=True,
            bytes_changed=4096,
            bytes_moved=2048,
            full_resync=(),
            resumed=False,
            seconds=self.seconds,
        )

    def protect(self, vm: str, target: ReplicaTarget, cycle: CycleSettings) -> CycleResult:
        self.calls.append(("protect", vm, target, cycle))
        self.protected.add(vm)
        return self._result(vm)

    def replicate(self, vm: str, cycle: CycleSettings, throttle: Throttle | None) -> CycleResult:
        self.calls.append(("replicate", vm, cycle, throttle))
        return self._result(vm)

    def clone(self, vm: str, target: ReplicaTarget, keep: int, name: str) -> str:
        self.calls.append(("clone", vm, target, keep, name))
        return name


def test_point_in_time_seeds_first_then_replicates_with_its_cycle_settings() -> None:
    policy = PointInTimePolicy()
    settings = policy.parse(
        {"interval": "15m", "keep": 12, "quiesce": "try", "max_age": "2d", "verify": True}
    )
    cycle = CycleSettings(quiesce="try", keep=12, max_age=timedelta(days=2), verify=True)
    engine, throttle = Engine(), Throttle(1 << 20)
    first = policy.run(engine, "db-01", TARGET, settings, throttle)
    second = policy.run(engine, "db-01", TARGET, settings, throttle)
    assert engine.calls == [("protect", "db-01", TARGET, cycle), ("replicate", "db-01", cycle, throttle)]
    assert first == (
        "restore point rp-1 on db-01-replica (seeded, quiesced, 2048 of 4096 changed bytes moved in 2.0s)"
    )
    assert "(incremental," in second


def test_point_in_time_defaults_to_the_cycle_defaults() -> None:
    settings = PointInTimePolicy().parse({"cron": "0  2 * * *"})
    assert settings.schedule == Schedule(cron="0 2 * * *")
    assert settings.cycle == CycleSettings()


def test_point_in_time_is_due_on_its_schedule() -> None:
    policy = PointInTimePolicy()
    settings = policy.parse({"interval": "1h"})
    assert policy.next_due(settings, None, T0) == T0
    assert policy.next_due(settings, T0, T0) == T0 + timedelta(hours=1)


def test_continuous_is_always_due() -> None:
    policy = ContinuousPolicy()
    settings = policy.parse({"target_rpo": "5m"})
    assert policy.next_due(settings, None, T0) == T0
    assert policy.next_due(settings, T0 - timedelta(seconds=1), T0) == T0


@pytest.mark.parametrize(
    ("seconds", "verdict"), [(30.0, "lag 30.0s within target RPO 1m"), (90.0, "lag 90.0s MISSED")]
)
def test_continuous_reports_the_lag_against_its_target(seconds: float, verdict: str) -> None:
    policy = ContinuousPolicy()
    engine = Engine(seconds=seconds)
    engine.protected.add("web-01")
    summary = policy.run(engine, "web-01", TARGET, policy.parse({"target_rpo": "1m", "keep": 3}), None)
    expected = CycleSettings(keep=3, target_rpo=timedelta(minutes=1))  # the engine reports RPO against it
    assert engine.calls == [("replicate", "web-01", expected, None)]
    assert verdict in summary


def test_clone_names_each_clone_from_the_template_in_utc() -> None:
    local = datetime(2025, 3, 1, 4, 5, 6, tzinfo=UTC).astimezone()  # any zone: the name is stamped in UTC
    policy = ClonePolicy(now=lambda: local)
    engine = Engine()
    summary = policy.run(engine, "db-01", TARGET, policy.parse({"interval": "1d", "keep": 3}), None)
    assert engine.calls == [("clone", "db-01", TARGET, 3, "db-01-clone-20250301040506")]
    assert summary == "clone db-01-clone-20250301040506 on secondary-ds (keeping 3)"


def test_clone_accepts_a_custom_template() -> None:
    settings = ClonePolicy().parse({"cron": "0 3 * * 0", "keep": 4, "name": "{vm}_{date}"})
    assert settings.name == "{vm}_{date}"


@pytest.mark.parametrize(
    ("raw", "problems"),
    [
        ({"keep": 2}, [(None, "a schedule is required: interval (e.g. 15m) or cron (e.g. '0 2 * * *')")]),
        ({"interval": "1d"}, [(None, "keep is required (a whole number from 1 to 50)")]),
        ({"interval": "1d", "keep": 51}, [("keep", "keep must be between 1 and 50, not 51")]),
        (
            {"interval": "1d", "keep": 1, "name": "{vm}"},
            [("name", "name template '{vm}' needs {vm} and {date} or {time} to be unique")],
        ),
        (
            {"interval": "1d", "keep": 1, "name": "{vm-{date}"},
            [("name", "name template '{vm-{date}' is malformed: unexpected '{' in field name")],
        ),
    ],
)
def test_clone_settings_errors_name_the_key(
    raw: dict[str, Any], problems: list[tuple[str | None, str]]
) -> None:
    with pytest.raises(PolicyError) as exc:
        ClonePolicy().parse(raw)
    assert list(exc.value.problems) == problems


def test_every_problem_in_the_settings_is_reported_together() -> None:
    raw = {"target_rpo": "soon", "keep": 0, "quiesce": "always", "max_change_share": 1.5, "extra": True}
    with pytest.raises(PolicyError) as exc:
        ContinuousPolicy().parse(raw)
    assert [key for key, _ in exc.value.problems] == [
        "target_rpo",
        "keep",
        "quiesce",
        "max_change_share",
        "extra",
    ]
    assert exc.value.key is None  # several keys: see .problems


def test_a_single_problem_names_its_key() -> None:
    with pytest.raises(PolicyError, match="max_age: not a duration") as exc:
        PointInTimePolicy().parse({"interval": "1h", "max_age": "forever"})
    assert exc.value.key == "max_age"


def test_a_settings_reader_rejects_keys_nobody_read() -> None:
    reader = SettingsReader({"hour": 3, "minute": 5}, "example")
    assert reader.integer("hour", default=2, low=0, high=23) == 3
    with pytest.raises(PolicyError, match="unknown setting 'minute' for policy 'example'"):
        reader.finish()


@pytest.mark.parametrize(
    ("vm", "folder", "tags", "selected"),
    [
        ("web-01", "DC0/vm/web", ("tier:gold",), True),
        ("web-01", "DC0/vm/web/frontend", ("tier:gold", "os:linux"), True),  # subfolders count
        ("web-01", "DC0/vm/webshop", ("tier:gold",), False),  # a prefix is not a parent folder
        ("web-01", "DC0/vm/web", ("tier:silver",), False),  # every given criterion must match
        ("db-01", "DC0/vm/web", ("tier:gold",), False),
        ("WEB-01", "DC0/vm/web", ("tier:gold",), False),  # names are case-sensitive, as in vCenter
    ],
)
def test_a_selection_matches_on_every_criterion_it_gives(
    vm: str, folder: str, tags: tuple[str, ...], selected: bool
) -> None:
    selection = Selection(names=("web-*", "app-??"), folders=("DC0/vm/web",), tags=("tier:gold",))
    assert selection.matches(vm, folder, tags) is selected


def test_an_empty_selection_matches_nothing() -> None:
    assert not Selection().matches("web-01", "DC0/vm", ())


def test_the_public_api_is_honest_and_plain_data() -> None:
    """Every name in __all__ exists; dataclasses are frozen with slots; no public function returns Any."""
    for name in policies.__all__:
        obj = getattr(policies, name)
        if dataclasses.is_dataclass(obj):
            assert vars(obj)["__dataclass_params__"].frozen and hasattr(obj, "__slots__"), name
        elif inspect.isfunction(obj):
            assert typing.get_type_hints(obj).get("return") is not typing.Any, name
