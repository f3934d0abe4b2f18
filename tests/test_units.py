"""Behaviour that needs no lab: sizes, lab descriptions, the control client, the CLI."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

import vsphere_replicator
import vsphere_replicator.lab
from vsphere_replicator.cli import build_parser, main
from vsphere_replicator.lab import LabControl, LabInfo, parse_size

INFO = LabInfo(
    url="https://127.0.0.1:1234/sdk",
    host="127.0.0.1",
    port=1234,
    user="u",
    password="s3cret-pw",
    ca_file="/tmp/ca.pem",
    datacenter="DC0",
    datastores={"primary-ds": "/p", "secondary-ds": "/s"},
    pid=1,
    state_dir="/tmp/state",
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64M", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("2MiB", 2 << 20), (7, 7)],
)
def test_sizes_are_binary(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12Q", "-1", "1.5G", "M"])
def test_a_bad_size_names_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_lab_info_round_trips_and_hides_the_password_from_repr() -> None:
    assert LabInfo.from_json(INFO.to_json()) == INFO
    assert "s3cret-pw" not in repr(INFO)


def test_control_session_ignores_requests_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    session = LabControl(INFO).session
    assert session.trust_env is False
    assert session.verify == "/tmp/ca.pem"
    settings = session.merge_environment_settings("https://127.0.0.1:1234/", {}, None, session.verify, None)
    assert settings["verify"] == "/tmp/ca.pem"


def test_public_api_names_exist() -> None:
    for module in (vsphere_replicator, vsphere_replicator.lab):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_the_public_api_is_plain_data() -> None:
    """Dataclasses are frozen with slots; functions return no untyped (pyVmomi) values."""
    for name in vsphere_replicator.__all__:
        obj = getattr(vsphere_replicator, name)
        if dataclasses.is_dataclass(obj):
            assert obj.__dataclass_params__.frozen and hasattr(obj, "__slots__"), name  # type: ignore[union-attr]
        elif inspect.isfunction(obj):
            hints = typing.get_type_hints(obj)
            assert hints.get("return") is not typing.Any, f"{name} returns Any"


def test_cli_lists_the_lab_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["lab", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("up", "status", "down", "env", "write", "cbt-reset", "fault"):
        assert command in out


def test_cli_bad_usage_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "write", "vm", "--offset", "12Q", "--random", "1"]) == 2
    err = capsys.readouterr().err
    assert "argument --offset: not a size: '12Q'" in err
    assert err.count("\n") == 1


def test_cli_without_a_running_lab_exits_1(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "env", "--state-dir", str(tmp_path)]) == 1
    assert "no lab is running" in capsys.readouterr().err
