"""Policy files: a valid file becomes plain data; every mistake is reported at its file, line and column."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from vsphere_replicator.policies import (
    CloneSettings,
    ContinuousSettings,
    Limits,
    PointInTimeSettings,
    PolicyError,
    PolicyFileError,
    Schedule,
    Selection,
    load_policy_file,
    parse_policy_file,
)
from vsphere_replicator.replication.settings import CycleSettings, ReplicaTarget

VALID = """\
version: 1
limits:
  total: 4
  per_host: 2
  per_datastore: 2
  bandwidth: 100MiB/s
protections:
  - name: web
    select:
      names: ["lab-vm-000*", "db-01"]
      folders: ["DC0/vm/web/"]
      tags: ["tier:gold"]
    target:
      datastore: secondary-ds
      host: null
      resource_pool: null
      folder: null
      provisioning: thin
      name: "{vm}-replica"
      networks: {"VM Network": "DR Network"}
    policy: point-in-time
    settings: {interval: 15m, keep: 12, quiesce: try}
  - name: db
    select: {names: [db-02]}
    target: {datastore: secondary-ds, host: esx-02, provisioning: thick-eager}
    policy: continuous
    settings:
      target_rpo: 5m
      max_age: 2d
      max_change_share: 0.5
  - name: archive
    select: {tags: ["backup:monthly"]}
    target: {datastore: archive-ds}
    policy: clone
    settings: {cron: "0 3 1 * *", keep: 3}
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return load_policy_file(path)


def errors_of(tmp_path: Path, text: str) -> list[tuple[int, int, str]]:
    """(line, column, reason) of every problem, after checking each names the file."""
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(PolicyFileError) as exc:
        load_policy_file(path)
    assert all(error.file == str(path) for error in exc.value.errors)
    assert str(exc.value) == "\n".join(str(error) for error in exc.value.errors)
    return [(e.line, e.column, e.reason) for e in exc.value.errors]


def test_a_valid_file_becomes_plain_data(tmp_path: Path) -> None:
    parsed = load(tmp_path, VALID)
    assert parsed.path == str(tmp_path / "policy.yaml")  # type: ignore[attr-defined]
    assert parsed.limits == Limits(total=4, per_host=2, per_datastore=2, bandwidth=100 << 20)  # type: ignore[attr-defined]
    web, db, archive = parsed.protections  # type: ignore[attr-defined]
    assert web.selection == Selection(
        names=("lab-vm-000*", "db-01"), folders=("DC0/vm/web",), tags=("tier:gold",)
    )
    assert web.target == ReplicaTarget(datastore="secondary-ds", networks=(("VM Network", "DR Network"),))
    assert web.settings == PointInTimeSettings(
        schedule=Schedule(interval=timedelta(minutes=15)), cycle=CycleSettings(quiesce="try", keep=12)
    )
    assert db.target == ReplicaTarget(datastore="secondary-ds", host="esx-02", provisioning="thick-eager")
    assert db.settings == ContinuousSettings(
        target_rpo=timedelta(minutes=5),
        cycle=CycleSettings(max_age=timedelta(days=2), max_change_share=0.5, target_rpo=timedelta(minutes=5)),
    )
    assert archive.settings == CloneSettings(
        schedule=Schedule(cron="0 3 1 * *"), keep=3, name="{vm}-clone-{date}{time}"
    )


def test_limits_are_optional_with_defaults() -> None:
    text = VALID.replace(
        "limits:\n  total: 4\n  per_host: 2\n  per_datastore: 2\n  bandwidth: 100MiB/s\n", ""
    )
    assert parse_policy_file(text).limits == Limits(total=4, per_host=2, per_datastore=2, bandwidth=None)


def test_the_error_is_a_policy_error_and_a_value_error() -> None:
    with pytest.raises(PolicyFileError) as exc:
        parse_policy_file("version: 1\n", "p.yaml")
    assert isinstance(exc.value, PolicyError) and isinstance(exc.value, ValueError)
    assert str(exc.value) == "p.yaml:1:1: the policy file is missing the required key 'protections'"


BASE = """\
version: 1
protections:
  - name: web
    select:
      names: [web-*]
    target:
      datastore: secondary-ds
    policy: point-in-time
    settings:
      interval: 15m
      keep: 12
"""


def variant(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            variant("  - name: web\n", "  - name: web\n    schedule: daily\n"),
            (
                4,
                5,
                "unknown key 'schedule' in a protection; "
                "expected one of: name, select, target, policy, settings",
            ),
            id="unknown-key",
        ),
        pytest.param(
            variant("      keep: 12\n", "      keep: '12'\n"),
            (11, 13, "point-in-time: keep must be a whole number, not '12'"),
            id="wrong-type",
        ),
        pytest.param(
            variant("policy: point-in-time", "policy: point-in-tim"),
            (8, 13, "unknown policy 'point-in-tim'; known policies: clone, continuous, point-in-time"),
            id="unknown-policy",
        ),
        pytest.param(
            variant("      keep: 12\n", "      keep: 12\n      interval: 1h\n"),
            (12, 7, "duplicate key 'interval' in the settings of protection 'web' (first at line 10)"),
            id="duplicate-key",
        ),
        pytest.param(
            variant("      names: [web-*]\n", "      names: []\n"),
            (5, 7, "the selection of protection 'web' is empty: give names, folders or tags"),
            id="empty-selection",
        ),
        pytest.param(
            variant("interval: 15m", "interval: 15 minutes"),
            (
                10,
                17,
                "point-in-time: interval: not a duration: '15 minutes' (use whole numbers with d, h, m, s "
                'units, largest first, e.g. "90s", "15m", "1h30m", "2d")',
            ),
            id="invalid-duration",
        ),
        pytest.param(
            variant("interval: 15m", "cron: '0 2 * *'"),
            (
                10,
                13,
                "point-in-time: cron must be a 5-field cron expression (minute hour day month weekday), "
                "not '0 2 * *'",
            ),
            id="invalid-cron",
        ),
        pytest.param(
            variant("interval: 15m", "cron: '0 25 * * *'"),
            (
                10,
                13,
                "point-in-time: cron must be a 5-field cron expression (minute hour day month weekday), "
                "not '0 25 * * *'",
            ),
            id="cron-hour-out-of-range",
        ),
        pytest.param(
            variant("      datastore: secondary-ds\n", "      host: esx-01\n"),
            (7, 7, "the target of protection 'web' is missing the required key 'datastore'"),
            id="target-without-datastore",
        ),
        pytest.param(
            variant("keep: 12", "keep: 25"),
            (11, 13, "point-in-time: keep must be between 1 and 24, not 25"),
            id="keep-out-of-range",
        ),
        pytest.param(
            variant("keep: 12", "keep: 0"),
            (11, 13, "point-in-time: keep must be between 1 and 24, not 0"),
            id="keep-zero",
        ),
        pytest.param(
            variant("      interval: 15m\n", ""),
            (10, 7, "point-in-time: a schedule is required: interval (e.g. 15m) or cron (e.g. '0 2 * * *')"),
            id="no-schedule",
        ),
        pytest.param(
            variant("      keep: 12\n", "      keep: 12\n      cron: '0 2 * * *'\n"),
            (12, 13, "point-in-time: give either interval or cron, not both"),
            id="interval-and-cron",
        ),
        pytest.param(
            variant("      keep: 12\n", "      keep: 12\n      quiesce: no\n"),
            (
                12,
                16,
                "point-in-time: quiesce must be one of never, try, require, not False "
                "(YAML reads a bare yes/no/on/off as a boolean)",
            ),
            id="yaml-boolean",
        ),
        pytest.param(
            variant("      keep: 12\n", "      keep: 12\n      retention: 3\n"),
            (12, 18, "point-in-time: unknown setting 'retention' for policy 'point-in-time'"),
            id="unknown-setting",
        ),
        pytest.param(
            variant("      keep: 12\n", "      keep: 12\n      verify: 'yes'\n"),
            (12, 15, "point-in-time: verify must be true or false, not 'yes'"),
            id="verify-not-boolean",
        ),
        pytest.param(
            variant("      names: [web-*]\n", "      tags: [gold]\n"),
            (5, 14, "a tag must be written category:tag, not 'gold'"),
            id="tag-without-category",
        ),
        pytest.param(
            variant("    target:\n", "    target:\n      name: replica-of-vm\n"),
            (7, 13, "target.name 'replica-of-vm' must contain {vm} and no other field"),
            id="replica-name-without-vm",
        ),
        pytest.param(
            variant("version: 1", "version: 2"),
            (1, 10, "unsupported version 2; this library reads version 1 only"),
            id="version",
        ),
        pytest.param(
            variant("version: 1\n", "version: 1\nlimits: {total: 4, per_host: 100}\n"),
            (2, 30, "limits.per_host must be between 1 and 64, not 100"),
            id="limit-out-of-range",
        ),
        pytest.param(
            variant("version: 1\n", "version: 1\nlimits: {bandwidth: 100Mbit}\n"),
            (
                2,
                21,
                "limits.bandwidth: not a rate: '100Mbit' (write a size per second with binary units, e.g. "
                '"100MiB/s" or "50M/s")',
            ),
            id="bad-bandwidth",
        ),
        pytest.param(
            variant("      keep: 12\n", "      keep: 12\n\tmax_age: 1d\n"),
            (12, 1, "invalid YAML: found character '\\t' that cannot start any token"),
            id="yaml-syntax",
        ),
        pytest.param(
            variant("protections:\n", "protections: []\nother:\n"),
            (2, 14, "protections is empty: list at least one protection"),
            id="no-protections",
        ),
    ],
)
def test_each_mistake_is_located(tmp_path: Path, text: str, expected: tuple[int, int, str]) -> None:
    errors = errors_of(tmp_path, text)
    assert expected in errors, errors
    if "other:" not in text:  # that case also carries an unknown top-level key
        assert errors == [expected]


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
        version: 1
        limits: {total: 0}
        protections:
          - name: web
            select: {names: [web-*]}
            target: {datastore: ds, provisioning: thick}
            policy: point-in-time
            settings: {interval: 15x, keep: 99}
          - name: web
            select: {}
            target: {datastore: ds}
            policy: continuous
          - name: clones
            select: {names: [db-*]}
            target: {datastore: ds}
            policy: clone
            settings: {interval: 1d, name: "{vm}-{host}"}
        """
    assert errors_of(tmp_path, text) == [
        (2, 17, "limits.total must be between 1 and 64, not 0"),
        (6, 43, "target.provisioning must be one of thin, thick-lazy, thick-eager, not 'thick'"),
        (
            8,
            26,
            "point-in-time: interval: not a duration: '15x' (use whole numbers with d, h, m, s units, "
            'largest first, e.g. "90s", "15m", "1h30m", "2d")',
        ),
        (8, 37, "point-in-time: keep must be between 1 and 24, not 99"),
        (9, 5, "continuous: target_rpo is required (a duration such as 15m)"),
        (9, 11, "duplicate protection name 'web' (first at line 4)"),
        (10, 13, "the selection of protection 'web' is empty: give names, folders or tags"),
        (17, 15, "clone: keep is required (a whole number from 1 to 50)"),
        (17, 36, "clone: name template '{vm}-{host}' may use only {vm}, {date}, {time}: host"),
    ]


def test_a_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "version: 1\nprotections: [\n") == [
        (3, 1, "invalid YAML: expected the node content, but found '<stream end>'")
    ]


def test_two_documents_are_refused(tmp_path: Path) -> None:
    assert errors_of(tmp_path, BASE + "---\nversion: 1\n") == [
        (12, 1, "invalid YAML: but found another document")
    ]


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "# nothing here\n")
    assert errors == [(0, 0, "the policy file is empty: expected version and protections")]


def test_an_unreadable_file_is_a_policy_file_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read the policy file"):
        load_policy_file(tmp_path / "missing.yaml")


def test_a_yaml_python_tag_is_refused_not_executed(tmp_path: Path) -> None:
    text = variant("keep: 12", "keep: !!python/object/apply:os.getpid []")
    (error,) = errors_of(tmp_path, text)
    assert error[:2] == (11, 13)
    assert (
        "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.getpid'"
        in error[2]
    )


def test_anchors_and_aliases_within_the_bounds_still_work() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        protections:
          - name: a
            select: {names: [a]}
            target: &target {datastore: secondary-ds}
            policy: point-in-time
            settings: &hourly {interval: 1h, keep: 3}
          - name: b
            select: {names: [b]}
            target: *target
            policy: point-in-time
            settings: *hourly
        """
    )
    first, second = parse_policy_file(text).protections
    assert first.target == second.target and first.settings == second.settings


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("protections: " + "[" * 40 + "]" * 40, "2:45: refused: nested deeper than 32 levels"),
        ("protections: &a [*a]", "2:18: refused: an alias refers to a node that contains it"),
        (
            "a0: &a0 ["
            + ", ".join(["x"] * 100)
            + "]\n"
            + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 100) + "]\n" for i in range(1, 4))
            + "protections: []",
            "refused: more than 100000 values once aliases are expanded",
        ),
    ],
)
def test_deep_recursive_or_exploding_yaml_is_refused_where_it_starts(body: str, reason: str) -> None:
    with pytest.raises(PolicyFileError) as raised:
        parse_policy_file("version: 1\n" + body + "\n", "p.yaml")
    assert reason in str(raised.value)


def test_only_a_regular_file_of_at_most_1_mib_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\n" + "#" * (1 << 20))
    for path, reason in ((big, "larger than 1 MiB"), (Path("/dev/zero"), "not a regular file")):
        with pytest.raises(PolicyFileError, match=reason):
            load_policy_file(path)
