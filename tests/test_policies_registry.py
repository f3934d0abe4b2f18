"""The policy registry: policies are found through entry points, built-in and third-party alike."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vsphere_replicator.policies import (
    ClonePolicy,
    ContinuousPolicy,
    PointInTimePolicy,
    PolicyError,
    PolicyFileError,
    PolicyPluginError,
    available_policies,
    get_policy,
    parse_policy_file,
    policy_names,
)

PLUGIN = Path(__file__).parent / "plugins" / "vr_example_policy"

FILE = """\
version: 1
protections:
  - name: nightly
    select: {{names: ["db-*"]}}
    target: {{datastore: secondary-ds}}
    policy: {policy}
    settings: {{hour: {hour}}}
"""


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example package, installed by pip into a directory of its own that is put on sys.path."""
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run(
        [*command, "--target", str(target), str(PLUGIN)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"pip could not install the example plugin:\n{done.stdout}\n{done.stderr}")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        yield target
    sys.modules.pop("vr_example_policy", None)


@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution whose three policy entry points are each broken in a different way."""
    info = tmp_path / "vr_broken_policies-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vr-broken-policies\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[vsphere_replicator.policies]\n"
        "broken-import = vr_no_such_module:Policy\n"
        "not-a-class = json:dumps\n"
        "not-a-policy = fractions:Fraction\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_the_builtin_policies_are_registered_through_entry_points() -> None:
    assert {"point-in-time", "continuous", "clone"} <= set(policy_names())
    policies = available_policies()
    assert policies["point-in-time"] is PointInTimePolicy
    assert policies["continuous"] is ContinuousPolicy
    assert policies["clone"] is ClonePolicy
    assert isinstance(get_policy("clone"), ClonePolicy)


def test_get_policy_answers_a_fresh_instance() -> None:
    assert get_policy("continuous") is not get_policy("continuous")


def test_an_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(
        PolicyError, match=r"unknown policy 'hourly'; known policies: .*clone, continuous"
    ) as exc:
        get_policy("hourly")
    assert "point-in-time" in str(exc.value)


def test_a_third_party_policy_installed_by_pip_is_found(example_plugin: Path) -> None:
    assert "example-nightly" in policy_names()
    policy: Any = get_policy("example-nightly")
    assert type(policy).__module__ == "vr_example_policy"
    assert Path(sys.modules["vr_example_policy"].__file__ or "").parent == example_plugin
    assert policy.parse({"hour": 3}).hour == 3


def test_a_policy_file_can_use_a_third_party_policy(example_plugin: Path) -> None:
    parsed = parse_policy_file(FILE.format(policy="example-nightly", hour=4), "nightly.yaml")
    (protection,) = parsed.protections
    assert protection.policy == "example-nightly"
    assert type(protection.settings).__name__ == "NightlySettings"
    assert protection.settings.hour == 4  # type: ignore[attr-defined]


def test_a_third_party_policys_errors_are_located_too(example_plugin: Path) -> None:
    with pytest.raises(PolicyFileError) as exc:
        parse_policy_file(FILE.format(policy="example-nightly", hour=31), "nightly.yaml")
    (error,) = exc.value.errors
    assert (error.file, error.line, error.column) == ("nightly.yaml", 7, 22)
    assert error.reason == "example-nightly: hour must be a whole number from 0 to 23, not 31"


@pytest.mark.usefixtures("broken_plugins")
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broken-import", "failed to import: ModuleNotFoundError: No module named 'vr_no_such_module'"),
        ("not-a-class", "must name a policy class, not a function"),
        ("not-a-policy", "is not a policy: Fraction lacks parse, next_due, run"),
    ],
)
def test_a_broken_plugin_is_reported_by_its_entry_point_name(name: str, reason: str) -> None:
    with pytest.raises(PolicyPluginError) as exc:
        get_policy(name)
    assert exc.value.plugin == name
    assert f"policy plugin {name!r}" in str(exc.value)
    assert "from vr-broken-policies 0.1" in str(exc.value)
    assert reason in str(exc.value)


@pytest.mark.usefixtures("broken_plugins")
def test_listing_every_policy_names_every_broken_plugin() -> None:
    with pytest.raises(PolicyPluginError) as exc:
        available_policies()
    for name in ("broken-import", "not-a-class", "not-a-policy"):
        assert f"policy plugin {name!r}" in str(exc.value)


@pytest.mark.usefixtures("broken_plugins")
def test_a_broken_plugin_does_not_block_the_others() -> None:
    assert isinstance(get_policy("point-in-time"), PointInTimePolicy)


@pytest.mark.usefixtures("broken_plugins")
def test_a_policy_file_using_a_broken_plugin_is_rejected_where_it_names_it() -> None:
    with pytest.raises(PolicyFileError) as exc:
        parse_policy_file(FILE.format(policy="broken-import", hour=1), "broken.yaml")
    (error,) = exc.value.errors
    assert (error.line, error.column) == (6, 13)
    assert "policy plugin 'broken-import'" in error.reason and "failed to import" in error.reason
