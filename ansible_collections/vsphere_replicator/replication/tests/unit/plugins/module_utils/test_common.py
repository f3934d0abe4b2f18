# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""module_utils.common: the shared argument spec, plain results, errors turned into fail_json.

Run by `ansible-test units` in the project's venv (where vsphere_replicator is
installed): a module's whole path from its parameters to `fail_json`, without
a vCenter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vsphere_replicator.replication.plugins.module_utils import common

SECRET = "s3cret-Pa55word"


@contextlib.contextmanager
def module_args(args: dict[str, Any]) -> Iterator[None]:
    """Hand `args` to the next AnsibleModule, as ansible's own patch_module_args does (ansible-core 2.19)."""
    try:
        from ansible.module_utils.testing import patch_module_args
    except ImportError:  # ansible-core 2.17 and 2.18 read the arguments from _ANSIBLE_ARGS
        saved = basic._ANSIBLE_ARGS
        basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode()
        try:
            yield
        finally:
            basic._ANSIBLE_ARGS = saved
        return
    with patch_module_args(args):
        yield


def exited(capsys: pytest.CaptureFixture[str], call: Any) -> dict[str, Any]:
    """What the module printed for Ansible when `call` made it exit (exit_json or fail_json)."""
    with pytest.raises(SystemExit):
        call()
    out = capsys.readouterr().out
    result: dict[str, Any] = json.loads(out)
    result["_raw"] = out
    return result


def test_the_shared_spec_hides_the_password_and_reads_each_option_from_its_variable() -> None:
    spec = common.argument_spec(vm={"type": "str", "required": True})
    assert spec["password"]["no_log"] is True
    variables = {name: spec[name]["fallback"][1] for name in spec if "fallback" in spec[name]}
    assert variables == {
        "hostname": ["VSPHERE_HOST"],
        "port": ["VSPHERE_PORT"],
        "username": ["VSPHERE_USER"],
        "password": ["VSPHERE_PASSWORD"],
        "ca_file": ["VSPHERE_CA_FILE"],
        "thumbprint": ["VSPHERE_THUMBPRINT"],
        "mounts": ["VSPHERE_REPLICATOR_MOUNTS"],
        "transport": ["VSPHERE_REPLICATOR_TRANSPORT"],
        "vddk_libdir": ["VSPHERE_REPLICATOR_VDDK_LIBDIR"],
        "vddk_plugin": ["VSPHERE_REPLICATOR_VDDK_PLUGIN"],
    }
    assert spec["transport"]["choices"] == ["mount", "vddk"]
    assert spec["vm"] == {"type": "str", "required": True}


def test_environment_fallbacks_fill_the_options_and_mounts_parse_from_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VSPHERE_HOST", "vc.example.com")
    monkeypatch.setenv("VSPHERE_PASSWORD", SECRET)
    monkeypatch.setenv("VSPHERE_REPLICATOR_MOUNTS", "secondary-ds=/mnt/b,primary-ds=/mnt/a")
    with module_args({"vm": "db-01"}):
        module = AnsibleModule(argument_spec=common.argument_spec(vm={"type": "str"}))
    assert module.params["hostname"] == "vc.example.com"
    assert module.params["password"] == SECRET
    assert module.params["mounts"] == {"secondary-ds": "/mnt/b", "primary-ds": "/mnt/a"}


@dataclasses.dataclass(frozen=True)
class _Point:
    id: str
    created: datetime
    age: timedelta
    disks: tuple[tuple[int, str], ...]


def test_plain_turns_results_into_json_ready_data() -> None:
    point = _Point("rp-000001", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), timedelta(minutes=30), ((1, "a"),))
    assert common.plain({"points": (point,)}) == {
        "points": [
            {"id": "rp-000001", "created": "2026-01-02T03:04:05+00:00", "age": 1800.0, "disks": [[1, "a"]]}
        ]
    }


def test_an_error_becomes_its_class_name_and_its_own_fields() -> None:
    class Refused(Exception):
        def __init__(self) -> None:
            super().__init__("refused")
            self.vm = "db-01"
            self.fault = "FileFault"
            self.msg = "shadowed by fail_json's own msg"
            self._private = "left out"

    assert common.error_fields(Refused()) == {"error": "Refused", "vm": "db-01", "fault": "FileFault"}


def test_a_library_error_fails_the_task_with_its_fields_and_never_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = {"username": "admin", "password": SECRET}
    with module_args(args):  # the module reads its profile at exit too: it exits inside
        module = AnsibleModule(argument_spec=common.argument_spec())
        result = exited(capsys, lambda: common.run(module, lambda conn: {"changed": True}))
    assert result["failed"] is True
    assert result["error"] == "InvalidInput"
    assert "host" in result["msg"]  # no hostname given: the library names what is missing
    assert SECRET not in result["_raw"]


def test_a_missing_library_fails_naming_the_package_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = "ModuleNotFoundError: No module named 'vsphere_replicator'"
    monkeypatch.setattr(common, "LIBRARY_IMPORT_ERROR", missing)
    with module_args({}):
        module = AnsibleModule(argument_spec=common.argument_spec())
        result = exited(capsys, lambda: common.require_library(module))
    assert result["failed"] is True
    assert "vsphere-replicator>=0.1.0" in result["msg"]
