"""The public API is plain data: no pyVmomi type crosses it, in any package or class.

The public API is every `__all__` under `vsphere_replicator` (the lab aside: it
stands beside the library): the functions named there, the methods and
properties of the classes named there, and the fields of every public
dataclass of every module, followed into the dataclasses they hold. None may
name a pyVmomi type (through unions, containers, callables or a TypeVar's
bound) or `Any`, which would hide one. The one exception is the SOAP seam
below the API: `Connection` makes the handles the layers under the API use.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from pyVmomi import vim
from pyVmomi.VmomiSupport import ManagedObject

import vsphere_replicator
import vsphere_replicator.lab

# `Connection` members that hand pyVmomi to the layers below the API, on purpose.
SOAP_SEAM = frozenset(
    {
        "vsphere_replicator.Connection.handle",
        "vsphere_replicator.Connection.service_instance",
        "vsphere_replicator.Connection.content",
    }
)


def public_modules() -> Iterator[ModuleType]:
    """The package and every module under it, except the lab and private ones (`_x`, `__main__`)."""
    yield vsphere_replicator
    for info in pkgutil.walk_packages(vsphere_replicator.__path__, "vsphere_replicator."):
        parts = info.name.split(".")[1:]
        if parts[0] == "lab" or any(p.startswith("_") for p in parts):
            continue
        yield importlib.import_module(info.name)


MODULES = list(public_modules())


def pyvmomi_types(hint: object, seen: set[int] | None = None) -> list[type]:
    """The pyVmomi types `hint` names, through unions, generics, callables, bounds and dataclass fields."""
    seen = set() if seen is None else seen
    if id(hint) in seen:
        return []
    seen.add(id(hint))
    if isinstance(hint, type) and hint.__module__.startswith(("pyVmomi", "pyVim")):
        return [hint]
    found: list[type] = []
    parts: list[object] = list(hint) if isinstance(hint, list) else list(typing.get_args(hint))
    if isinstance(hint, typing.TypeVar):
        parts += [hint.__bound__, *hint.__constraints__]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        parts += typing.get_type_hints(hint).values()
    for part in parts:
        found += pyvmomi_types(part, seen)
    return found


def names_any(hint: object) -> bool:
    return hint is typing.Any or any(names_any(a) for a in typing.get_args(hint))


def public_dataclasses() -> Iterator[tuple[str, type]]:
    for module in MODULES:
        for name, obj in vars(module).items():
            if (
                not name.startswith("_")
                and isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
            ):
                yield f"{module.__name__}.{name}", obj


def api_callables() -> Iterator[tuple[str, Callable[..., object]]]:
    """Every function in an `__all__`, and every public method and property of a class in one."""
    for module in MODULES:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            where = f"{module.__name__}.{name}"
            if inspect.isfunction(obj):
                yield where, obj
            elif isinstance(obj, type):
                for member, value in vars(obj).items():
                    if member.startswith("_"):
                        continue
                    if isinstance(value, property):
                        value = value.fget
                    if isinstance(value, staticmethod | classmethod):
                        value = value.__func__
                    if inspect.isfunction(value):
                        yield f"{where}.{member}", value


def test_the_walk_covers_every_layer_of_the_package() -> None:
    names = {m.__name__ for m in MODULES}
    for expected in ("inventory", "cli", "policies.runner", "replication.cycle", "transport.nbd", "units"):
        assert f"vsphere_replicator.{expected}" in names
    assert not any(n.startswith("vsphere_replicator.lab") or n.endswith("__main__") for n in names)
    assert len(list(public_dataclasses())) > 30 and len(list(api_callables())) > 100


def test_every_name_in_every_all_exists() -> None:
    for module in [*MODULES, vsphere_replicator.lab]:
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_dataclasses_are_frozen_with_slots_and_hold_plain_data() -> None:
    for where, kind in public_dataclasses():
        assert kind.__dataclass_params__.frozen and "__slots__" in vars(kind), where  # type: ignore[attr-defined]
        for field, hint in typing.get_type_hints(kind).items():
            assert not pyvmomi_types(hint), f"{where}.{field} holds pyVmomi: {hint}"
            assert not names_any(hint), f"{where}.{field} is typed Any, which hides what it holds"


def test_the_api_neither_takes_nor_returns_pyvmomi_or_any() -> None:
    leaks = []
    for where, function in api_callables():
        hints = typing.get_type_hints(function)
        if where in SOAP_SEAM:
            continue
        for name, hint in hints.items():
            if pyvmomi_types(hint):
                leaks.append(f"{where} {name}: {hint}")
        if hints.get("return") is typing.Any:
            leaks.append(f"{where} returns Any")
    assert leaks == []


def test_the_soap_seam_is_where_it_says_and_typed() -> None:
    found = dict(api_callables())
    assert set(found) >= SOAP_SEAM, "a seam member was renamed: update SOAP_SEAM"
    hints = typing.get_type_hints(found["vsphere_replicator.Connection.handle"])
    assert pyvmomi_types(hints["return"]) == [ManagedObject]  # M, bound to any managed object


@dataclasses.dataclass(frozen=True, slots=True)
class _Inner:
    store: tuple[vim.Datastore, ...]


@pytest.mark.parametrize(
    ("hint", "found"),
    [
        (vim.VirtualMachine | None, [vim.VirtualMachine]),
        (dict[str, list[vim.vm.Snapshot]], [vim.vm.Snapshot]),
        (Callable[[vim.Task], int], [vim.Task]),
        (typing.TypeVar("X", bound=vim.HostSystem), [vim.HostSystem]),
        (_Inner | int, [vim.Datastore]),
        (tuple[str, int | None], []),
    ],
)
def test_the_check_sees_pyvmomi_wherever_a_hint_puts_it(hint: object, found: list[type]) -> None:
    assert pyvmomi_types(hint) == found
