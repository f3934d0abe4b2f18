"""The error tree drawn in errors.py's docstring is the tree the package defines.

A caller learns what to catch from that drawing; a class missing from it, or
drawn under the wrong parent, would send them to the wrong `except`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest
from pyVmomi import vim, vmodl

import vsphere_replicator
from vsphere_replicator import errors
from vsphere_replicator.errors import (
    ArgumentRejected,
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    ReplicatorError,
    VSphereFault,
)
from vsphere_replicator.faults import translate

# "│    ├── PolicyError   text  (policies.policyfile)": depth from the column of the name
_LINE = re.compile(r"^(?P<lead>[ │├└─]*)(?P<name>[A-Z]\w+)(?: \((?P<bases>[\w, ]+)\))?\s+(?P<text>.*)$")
_HOME = re.compile(r"\((?P<module>[a-z_.]+)\)\s*$")


def _drawn() -> dict[str, tuple[str | None, str | None]]:
    """Class name -> (parent drawn above it, module named beside it), from the docstring."""
    doc = errors.__doc__ or ""
    block = doc.split("\n\n")[1].splitlines()
    drawn: dict[str, tuple[str | None, str | None]] = {}
    stack: list[tuple[int, str]] = []
    for line in block:
        match = _LINE.match(line)
        assert match, f"errors.py's tree has a line it cannot read: {line!r}"
        depth = len(match["lead"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        home = _HOME.search(match["text"])
        drawn[match["name"]] = (stack[-1][1] if stack else None, home["module"] if home else None)
        stack.append((depth, match["name"]))
    return drawn


def _defined() -> dict[str, type[ReplicatorError]]:
    """Every ReplicatorError subclass any module of the package defines (the lab included)."""
    found: dict[str, type[ReplicatorError]] = {}
    for info in pkgutil.walk_packages(vsphere_replicator.__path__, "vsphere_replicator."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, ReplicatorError) and obj.__module__ == info.name:
                found[name] = obj
    return found


def test_every_error_class_is_drawn_under_its_real_parent() -> None:
    drawn, defined = _drawn(), _defined()
    assert set(drawn) == set(defined), "drawn but not defined, or defined but not drawn"
    for name, cls in defined.items():
        parent, _ = drawn[name]
        library_bases = [b.__name__ for b in cls.__bases__ if issubclass(b, ReplicatorError)]
        expected = library_bases[0] if library_bases else None
        assert parent == expected, f"{name} is drawn under {parent}, defined under {expected}"


def test_classes_defined_outside_errors_py_are_the_ones_marked_with_their_module() -> None:
    drawn, defined = _drawn(), _defined()
    for name, cls in defined.items():
        _, home = drawn[name]
        where = cls.__module__.removeprefix("vsphere_replicator.")
        assert (home or "errors") == where, f"{name} is defined in {where}, drawn as {home or 'errors'}"


def test_vcenters_invalid_argument_is_a_vsphere_fault_not_the_callers_bad_input() -> None:
    fault = vmodl.fault.InvalidArgument(invalidProperty="spec.memoryMB")
    error = translate(fault, what="reconfigure vm-1", vm="vm-1")
    assert isinstance(error, ArgumentRejected) and isinstance(error, VSphereFault)
    assert not isinstance(error, InvalidInput)
    assert error.fault == "InvalidArgument" and "spec.memoryMB" in str(error)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (vim.fault.InvalidLogin(), AuthenticationFailed),
        (vmodl.fault.ManagedObjectNotFound(), NotFound),
        (vim.fault.FileFault(), VSphereFault),
    ],
    ids=lambda v: getattr(v, "__name__", type(v).__name__),
)
def test_faults_map_to_their_branch(fault: Exception, expected: type[ReplicatorError]) -> None:
    assert type(translate(fault, what="a call")) is expected
