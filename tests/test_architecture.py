"""The package's layers, written down as data, and a check that every import points down them.

Each module of `vsphere_replicator` belongs to a component: a top-level
module (`cbt`), a subpackage (`replication`, with all its modules) or the
package's own `__init__` (the façade `import vsphere_replicator as vr`). Each
component sits in one layer. A module may import its own component, any
component of its own layer, and any lower layer — never a higher one. The
lab stands apart: it may import only the foundation, and only the front ends
import it. Over all of that, the module graph has no cycles.

Every import statement counts, wherever it is: inside a function, under
`if TYPE_CHECKING:`, relative or absolute. A function-level import is no way
round a layer. docs/architecture.md explains the layers; change both together.
A new module fails `test_the_layer_map_matches_the_package` until it is placed.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "vsphere_replicator"
SOURCE = Path(__file__).resolve().parent.parent / PACKAGE  # the package beside these tests
ROOT = "__init__"  # the component of vsphere_replicator/__init__.py itself

# Bottom-up. What each layer is for, and where a new feature goes, is in docs/architecture.md.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    # Values and rules with no I/O: the error tree, argument checks, units, extents, and how values show
    # themselves in a notebook (display: pure rendering every layer's dataclasses mix in).
    ("foundation", frozenset({"errors", "checks", "units", "extents", "display"})),
    # One session with vCenter: TLS, login, retries, fault translation, structured logs.
    ("session", frozenset({"logs", "faults", "retry", "connection"})),
    # Reading the inventory and waiting for tasks.
    ("vcenter", frozenset({"inventory", "tasks"})),
    # Where disk bytes are read and written (HTTP, mounted paths, NBD), and the bandwidth cap.
    ("transport", frozenset({"transport"})),
    # The building blocks of the brief, and the façade that re-exports some of them.
    (
        "blocks",
        frozenset(
            {
                ROOT,
                "snapshots",
                "cbt",
                "clone",
                "shells",
                "customize",
                "networks",
                "macs",
                "tags",
                "verify",
                "delta",
            }
        ),
    ),
    # Protect, cycles as transactions, restore points, failover, failback.
    ("replication", frozenset({"replication"})),
    # Policy plugins, policy files, the runner, and the live engine over `replication`.
    ("policies", frozenset({"policies"})),
    # What a person runs: the command, the demo, and the notebook helpers (progress bars, plots).
    ("front ends", frozenset({"cli", "demo", "notebook"})),
)


@dataclass(frozen=True, slots=True)
class Apart:
    """A component outside the stack: it imports layers up to `imports_up_to`; only `used_by` imports it."""

    imports_up_to: str
    used_by: str


# The lab is a simulated vCenter: the library must never need it, and it must not lean on the library
# it is there to test. (lab/pytest_plugin.py is part of the lab.)
APART: Mapping[str, Apart] = {"lab": Apart(imports_up_to="foundation", used_by="front ends")}


def _module_files(package_dir: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every .py file under `package_dir`."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _known(name: str, modules: Iterable[str]) -> str | None:
    """The longest prefix of `name` that is one of `modules` (`a.b.func` -> `a.b`)."""
    known = set(modules)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def module_graph(package_dir: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, from every import statement in its source.

    `from a import b` counts as importing the module `a.b` when that is a
    module, else `a` (a name defined in `a`, or re-exported by its `__init__`).
    """
    files = _module_files(package_dir, package)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            targets.update(t for name in names if (t := _known(name, files)) is not None)
        targets.discard(module)
        graph[module] = targets
    return graph


def component(module: str, package: str = PACKAGE) -> str:
    """`vsphere_replicator.replication.cycle` -> `replication`; the package itself -> `__init__`."""
    if module == package:
        return ROOT
    return module.removeprefix(package + ".").partition(".")[0]


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))
    return found


def violations(
    graph: Mapping[str, set[str]],
    layers: Sequence[tuple[str, frozenset[str]]] = LAYERS,
    apart: Mapping[str, Apart] = APART,
    package: str = PACKAGE,
) -> list[str]:
    """Every import that breaks the layering, every unplaced or stale component, and every cycle."""
    level = {name: i for i, (_, members) in enumerate(layers) for name in members}
    layer_name = {name: layer for layer, members in layers for name in members}
    layer_index = {layer: i for i, (layer, _) in enumerate(layers)}
    present = {component(m, package) for m in graph}
    placed = set(level) | set(apart)
    problems = [
        f"{package}.{c} is in no layer: place it in LAYERS (tests/test_architecture.py)"
        " and docs/architecture.md"
        for c in sorted(present - placed)
    ]
    problems += [
        f"{c!r} is in LAYERS but the package has no such module: remove it" for c in sorted(placed - present)
    ]
    for module in sorted(graph):
        source = component(module, package)
        for target in sorted(graph[module]):
            dest = component(target, package)
            if source == dest or source not in placed or dest not in placed:
                continue
            where = f"{module} imports {target}"
            if dest in apart:
                if source in apart or layer_name[source] != apart[dest].used_by:
                    problems.append(f"{where}: only the {apart[dest].used_by} layer may import {dest}")
            elif source in apart:
                if level[dest] > layer_index[apart[source].imports_up_to]:
                    problems.append(
                        f"{where}: {source} may import only up to the {apart[source].imports_up_to} layer,"
                        f" and {dest} is in {layer_name[dest]}"
                    )
            elif level[dest] > level[source]:
                problems.append(
                    f"{where}: an upward import, from the {layer_name[source]} layer"
                    f" to the higher {layer_name[dest]} layer"
                )
    problems += [f"an import cycle among {', '.join(members)}" for members in _cycles(graph)]
    return problems


@pytest.fixture(scope="module")
def real_graph() -> dict[str, set[str]]:
    return module_graph(SOURCE)


def test_the_layer_map_matches_the_package(real_graph: dict[str, set[str]]) -> None:
    """Every module is in a layer, and every component the map names exists."""
    problems = [p for p in violations(real_graph) if "LAYERS" in p]
    assert problems == []


def test_imports_point_down_the_layers(real_graph: dict[str, set[str]]) -> None:
    assert violations(real_graph) == []


def test_each_component_is_in_one_layer_only() -> None:
    placed = [name for _, members in LAYERS for name in members] + list(APART)
    assert len(placed) == len(set(placed))


# The check itself, on module graphs made up for it.

GOOD = {
    "pkg.errors": set(),
    "pkg.connection": {"pkg.errors"},
    "pkg.replication": {"pkg.replication.cycle"},
    "pkg.replication.cycle": {"pkg.connection", "pkg.errors"},
    "pkg.policies": {"pkg.replication"},
    "pkg.lab": {"pkg.errors"},
    "pkg.cli": {"pkg.policies", "pkg.lab"},
}
SMALL_LAYERS = (
    ("foundation", frozenset({"errors"})),
    ("session", frozenset({"connection"})),
    ("replication", frozenset({"replication"})),
    ("policies", frozenset({"policies"})),
    ("front ends", frozenset({"cli"})),
)


def check(graph: Mapping[str, set[str]]) -> list[str]:
    return violations(graph, SMALL_LAYERS, APART, package="pkg")


def test_a_graph_that_follows_the_layers_passes() -> None:
    assert check(GOOD) == []


def test_an_upward_import_fails_naming_the_import_and_both_layers() -> None:
    graph = {**GOOD, "pkg.connection": {"pkg.errors", "pkg.policies"}}
    assert check(graph) == [
        "pkg.connection imports pkg.policies: an upward import, from the session layer to the higher"
        " policies layer",
        "an import cycle among pkg.connection, pkg.policies, pkg.replication, pkg.replication.cycle",
    ]


def test_an_upward_import_that_makes_no_cycle_fails_too() -> None:
    graph = {**GOOD, "pkg.errors": set(), "pkg.replication.cycle": {"pkg.errors", "pkg.cli"}}
    graph["pkg.cli"] = {"pkg.lab"}
    graph["pkg.policies"] = set()
    assert check(graph) == [
        "pkg.replication.cycle imports pkg.cli: an upward import, from the replication layer to the higher"
        " front ends layer"
    ]


def test_an_import_of_the_lab_from_below_the_front_ends_fails() -> None:
    graph = {**GOOD, "pkg.connection": {"pkg.errors", "pkg.lab"}}
    assert check(graph) == ["pkg.connection imports pkg.lab: only the front ends layer may import lab"]


def test_the_lab_importing_more_than_the_foundation_fails() -> None:
    graph = {**GOOD, "pkg.lab": {"pkg.errors", "pkg.connection"}}
    assert check(graph) == [
        "pkg.lab imports pkg.connection: lab may import only up to the foundation layer,"
        " and connection is in session"
    ]


def test_a_cycle_within_one_layer_fails() -> None:
    layers = (("foundation", frozenset({"errors", "checks"})), *SMALL_LAYERS[1:])
    graph = {**GOOD, "pkg.errors": {"pkg.checks"}, "pkg.checks": {"pkg.errors"}}
    assert violations(graph, layers, APART, package="pkg") == ["an import cycle among pkg.checks, pkg.errors"]


def test_a_module_in_no_layer_fails_and_so_does_a_stale_entry() -> None:
    graph = {**GOOD, "pkg.retry": {"pkg.errors"}}
    del graph["pkg.cli"]
    assert check(graph) == [
        "pkg.retry is in no layer: place it in LAYERS (tests/test_architecture.py) and docs/architecture.md",
        "'cli' is in LAYERS but the package has no such module: remove it",
    ]


# The scanner, on a package written for it.


def write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    package = write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "errors.py": "",
            "connection.py": "import pkg.errors as e\n",
            "replication/__init__.py": "from pkg.replication.cycle import run\n",
            "replication/failpoints.py": "",
            "replication/cycle.py": (
                "from typing import TYPE_CHECKING\n"
                "from . import failpoints\n"
                "from ..connection import connect\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.cli import main\n"
                "def run():\n"
                "    from pkg.errors import Oops\n"
            ),
            "cli.py": "from pkg import replication\nimport json\n",
        },
    )
    assert module_graph(package, "pkg") == {
        "pkg": set(),
        "pkg.errors": set(),
        "pkg.connection": {"pkg.errors"},
        "pkg.replication": {"pkg.replication.cycle"},
        "pkg.replication.failpoints": set(),
        "pkg.replication.cycle": {"pkg.replication.failpoints", "pkg.connection", "pkg.cli", "pkg.errors"},
        "pkg.cli": {"pkg.replication"},
    }


def test_an_upward_import_hidden_in_a_function_of_the_real_package_is_caught(tmp_path: Path) -> None:
    """The check on a copy of the package with the cycle issue 13 found put back, inside a function."""
    copy = tmp_path / PACKAGE
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("vcsim", "__pycache__"))
    with (copy / "replication" / "seed.py").open("a") as seed:
        seed.write(
            "\n\ndef _injected() -> None:\n    from vsphere_replicator.policies.base import Selection\n"
        )
    assert violations(module_graph(copy)) == [
        "vsphere_replicator.replication.seed imports vsphere_replicator.policies.base: an upward import,"
        " from the replication layer to the higher policies layer"
    ]
