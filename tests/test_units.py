"""Behaviour that needs no lab: lab descriptions, the control client, the CLI."""

from __future__ import annotations

import re
import typing

import pytest

from vsphere_replicator.checks import check_choice
from vsphere_replicator.cli import build_parser, main
from vsphere_replicator.clone import ClonePlacement, DiskPlacement
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import POWER_STATES, PROVISIONING, PowerState, Provisioning
from vsphere_replicator.lab import LabControl, LabInfo
from vsphere_replicator.replication.settings import QUIESCE_MODES, CycleSettings, QuiesceMode, ReplicaTarget

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


def test_an_unexpected_exception_is_one_line_and_exit_code_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vsphere_replicator.cli as cli

    def broken(args: object) -> int:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(cli, "configure_logging", lambda **_: None)
    monkeypatch.setattr(cli.lab, "cmd_lab_status", broken)
    assert main(["lab", "status"]) == 70
    err = capsys.readouterr().err
    assert err == "error: internal error: RuntimeError: a bug; please report\n"


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from vsphere_replicator.cli import EXIT_CODES

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code, meaning in EXIT_CODES.items():
        assert f"{code:<3} {meaning}" in out


def test_a_large_lab_write_goes_in_pieces_the_last_first_with_the_bytes_of_one_seeded_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last piece is the lab's check that the write fits; a seed gives the same bytes as one call."""
    import hashlib
    import random

    from vsphere_replicator.lab import control as module

    monkeypatch.setattr(module, "WRITE_PIECE", 4096)
    sent: list[tuple[int, bytes]] = []
    lab = LabControl(INFO)
    monkeypatch.setattr(lab, "write", lambda vm, data, *, offset, disk=0: sent.append((offset, data)))
    digest = lab.write_random_digest("vm", offset=1000, length=10_001, seed=3)
    expected = random.Random(3).randbytes(10_001)
    assert [offset for offset, _ in sent] == [1000 + 8192, 1000, 1000 + 4096]
    assert b"".join(data for _, data in sorted(sent)) == expected
    assert digest == hashlib.sha256(expected).hexdigest()


def test_a_lab_write_refused_on_its_first_piece_sends_no_other() -> None:
    from vsphere_replicator.errors import LabError
    from vsphere_replicator.lab.control import WRITE_PIECE

    calls: list[int] = []

    class Refusing(LabControl):
        def write(self, vm: str, data: bytes, *, offset: int, disk: int = 0) -> dict[str, object]:
            calls.append(offset)
            raise LabError("lab write: write of 1 bytes at offset 0 does not fit disk 0 of vm (capacity 1)")

    with pytest.raises(LabError, match=r"lab write of \d+ bytes at offset 0 refused: write of"):
        Refusing(INFO).write_random_digest("vm", offset=0, length=3 * WRITE_PIECE)
    assert calls == [2 * WRITE_PIECE]


@pytest.mark.parametrize(
    ("make", "choices"),
    [
        (lambda v: ClonePlacement(datastore="ds", provisioning=v), "thin, thick-lazy, thick-eager"),
        (lambda v: DiskPlacement(disk=2000, provisioning=v), "thin, thick-lazy, thick-eager"),
        (lambda v: ReplicaTarget(datastore="ds", provisioning=v), "thin, thick-lazy, thick-eager"),
        (lambda v: CycleSettings(quiesce=v), "never, try, require"),
    ],
)
@pytest.mark.parametrize("value", ["fat", "THIN", "", True, 3])
def test_a_literal_field_refuses_what_its_choices_lack(
    make: typing.Callable[[object], object], choices: str, value: object
) -> None:
    # ReplicaTarget names a wrong type first, as it always has
    message = rf"must be (one of {choices}|str), not (\w+ )?{re.escape(repr(value))}"
    with pytest.raises(InvalidInput, match=message):
        make(value)


@pytest.mark.parametrize(
    ("alias", "choices"),
    [(Provisioning, PROVISIONING), (PowerState, POWER_STATES), (QuiesceMode, QUIESCE_MODES)],
)
def test_each_choice_tuple_is_its_literal(alias: object, choices: tuple[str, ...]) -> None:
    assert choices == typing.get_args(alias) and len(choices) == len(set(choices)) > 1
    assert check_choice(choices[-1], choices, "it") is choices[-1]
