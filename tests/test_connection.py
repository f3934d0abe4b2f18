"""Sessions: TLS verified, profiles, re-login, bounded retries, no secrets in errors."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from typing import Any

import pytest
from pyVmomi import vim
from structlog.testing import capture_logs

from vsphere_replicator.cli import main
from vsphere_replicator.connection import RetryPolicy, connect, settings_from
from vsphere_replicator.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TLSVerificationFailed,
)
from vsphere_replicator.inventory import get_vm, read_inventory, vm_object
from vsphere_replicator.snapshots import create_snapshot


def lab_thumbprint(lab: Any) -> str:
    context = ssl.create_default_context(cafile=lab.ca_file)
    with (
        socket.create_connection((lab.host, lab.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_verifies_tls_against_the_ca_file(lab: Any) -> None:
    with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn:
        assert conn.content.about.apiVersion
        assert lab.password not in repr(conn.settings)


def test_an_untrusted_certificate_is_refused_without_leaking_the_password(lab: Any) -> None:
    with pytest.raises(TLSVerificationFailed) as err:
        connect(lab.host, lab.user, lab.password, port=lab.port)
    assert lab.password not in str(err.value)


def test_a_pinned_sha256_thumbprint_is_enough(lab: Any) -> None:
    pin = lab_thumbprint(lab)
    colons = ":".join(pin[i : i + 2] for i in range(0, 64, 2)).upper()
    with connect(lab.host, lab.user, lab.password, port=lab.port, thumbprint=colons) as conn:
        assert conn.content.about.apiVersion
    with pytest.raises(TLSVerificationFailed, match="pinned thumbprint"):
        connect(lab.host, lab.user, lab.password, port=lab.port, thumbprint="0" * 64)
    with pytest.raises(InvalidInput, match="SHA-256"):
        connect(lab.host, lab.user, lab.password, port=lab.port, thumbprint="abc")


def test_insecure_is_explicit_and_logged(lab: Any) -> None:
    with (
        capture_logs() as logs,
        connect(lab.host, lab.user, lab.password, port=lab.port, insecure=True) as conn,
    ):
        assert conn.content.about.apiVersion
    assert any(e["event"] == "tls_verification_disabled" and e["log_level"] == "warning" for e in logs)


def test_connects_from_the_environment_profile(lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "HOST": lab.host,
        "PORT": str(lab.port),
        "USER": lab.user,
        "PASSWORD": lab.password,
        "CA_FILE": lab.ca_file,
    }.items():
        monkeypatch.setenv(f"VSPHERE_{name}", value)
    with connect() as conn:
        assert conn.settings.port == lab.port
    monkeypatch.delenv("VSPHERE_HOST")
    with pytest.raises(InvalidInput, match="VSPHERE_HOST"):
        connect()


DEFAULT_PROFILE = {
    "VSPHERE_HOST": "vc.site-a.example",
    "VSPHERE_USER": "admin-a",
    "VSPHERE_PASSWORD": "site-a-secret",
    "VSPHERE_PORT": "8443",
    "VSPHERE_CA_FILE": "/etc/site-a-ca.pem",
    "VSPHERE_THUMBPRINT": "ab" * 32,
}


@pytest.mark.parametrize("field", ["HOST", "USER", "PASSWORD"])
def test_a_named_profile_missing_a_field_names_its_own_variable(field: str) -> None:
    prod = {f"VSPHERE_PROD_{k}": v for k, v in {"HOST": "vc.b", "USER": "u", "PASSWORD": "p"}.items()}
    del prod[f"VSPHERE_PROD_{field}"]
    with pytest.raises(InvalidInput, match=f"export VSPHERE_PROD_{field}\\b") as err:
        settings_from(environ={**DEFAULT_PROFILE, **prod}, profile="prod")
    assert "site-a-secret" not in str(err.value)


def test_a_named_profile_takes_nothing_from_the_default_one() -> None:
    env = {
        **DEFAULT_PROFILE,
        "VSPHERE_PROD_HOST": "vc.b",
        "VSPHERE_PROD_USER": "u",
        "VSPHERE_PROD_PASSWORD": "p",
    }
    settings = settings_from(environ=env, profile="prod")
    assert (settings.host, settings.user, settings.password) == ("vc.b", "u", "p")
    assert (settings.port, settings.ca_file, settings.thumbprint) == (443, None, None)


def test_settings_read_only_the_mapping_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DEFAULT_PROFILE.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInput, match="export VSPHERE_PASSWORD"):
        settings_from(environ={"VSPHERE_HOST": "vc.b", "VSPHERE_USER": "u"})


def test_a_profile_name_must_make_variable_names() -> None:
    with pytest.raises(InvalidInput, match="profile name"):
        settings_from(environ={}, profile="prod-east")


def test_cli_profile_never_borrows_the_default_password(
    lab: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lab would accept the default profile's password: the CLI must not even try it."""
    for name, value in {
        "HOST": lab.host,
        "PORT": str(lab.port),
        "USER": lab.user,
        "CA_FILE": lab.ca_file,
    }.items():
        monkeypatch.setenv(f"VSPHERE_PROD_{name}", value)
    monkeypatch.setenv("VSPHERE_HOST", lab.host)
    monkeypatch.setenv("VSPHERE_PASSWORD", lab.password)
    assert main(["snapshots", "list", "--profile", "prod"]) == 2
    err = capsys.readouterr().err
    assert "VSPHERE_PROD_PASSWORD" in err and lab.password not in err


def test_bad_credentials_are_not_retried(lab: Any, control: Any) -> None:
    control.reset_stats()
    with pytest.raises(AuthenticationFailed) as err:
        connect(lab.host, lab.user, "wrong-password", port=lab.port, ca_file=lab.ca_file)
    assert "wrong-password" not in str(err.value)
    assert control.stats()["methods"]["Login"] == 1


def test_an_expired_session_logs_in_again_without_repeating_the_call(
    conn: Any, control: Any, vm_name: str
) -> None:
    get_vm(conn, vm_name)
    control.expire_sessions()
    control.reset_stats()
    with capture_logs() as logs:
        result = create_snapshot(conn, vm_name, "after-expiry")
    methods = control.stats()["methods"]
    assert methods["Login"] == 1 and methods["CreateSnapshot_Task"] == 1
    assert [s.name for s in get_vm(conn, vm_name).all_snapshots()] == ["vr-after-expiry"]
    assert result.snapshot.name == "vr-after-expiry"
    assert any(e["event"] == "session_expired_relogin" for e in logs)


def test_dropped_connections_are_retried_with_backoff(lab: Any, control: Any, vm_name: str) -> None:
    waits: list[float] = []
    with connect(
        lab.host,
        lab.user,
        lab.password,
        port=lab.port,
        ca_file=lab.ca_file,
        retry=RetryPolicy(sleep=waits.append),
    ) as conn:
        control.drop_connections(count=2, path="sdk")
        assert get_vm(conn, vm_name).name == vm_name
    assert len(waits) == 2 and waits[0] < waits[1]


def test_retries_are_bounded(lab: Any, control: Any) -> None:
    waits: list[float] = []
    with connect(
        lab.host,
        lab.user,
        lab.password,
        port=lab.port,
        ca_file=lab.ca_file,
        retry=RetryPolicy(attempts=3, sleep=waits.append),
    ) as conn:
        control.drop_connections(count=5, path="sdk")
        with pytest.raises(ConnectionFailed):
            read_inventory(conn)
        control.clear_faults()
    assert len(waits) == 2


def test_a_state_change_is_not_repeated_after_a_dropped_answer(conn: Any, control: Any, vm_name: str) -> None:
    handle = vm_object(conn, get_vm(conn, vm_name).moref)
    control.drop_connections(count=1, path="sdk")
    control.reset_stats()
    with pytest.raises(ConnectionFailed):
        conn.call(
            "snapshot",
            lambda: handle.CreateSnapshot_Task(name="once", description="", memory=False, quiesce=False),
            idempotent=False,
        )
    assert control.stats()["methods"]["CreateSnapshot_Task"] == 1


def test_a_permanent_fault_is_not_retried(conn: Any, control: Any, vm_name: str) -> None:
    control.fail_method("RetrievePropertiesEx", "NoPermission", count=1)
    control.reset_stats()
    with pytest.raises(PermissionDenied):
        get_vm(conn, vm_name)
    assert control.stats()["methods"]["RetrievePropertiesEx"] == 1


def test_close_logs_out(lab: Any, control: Any) -> None:
    conn = connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file)
    control.reset_stats()
    conn.close()
    conn.close()
    assert control.stats()["methods"]["Logout"] == 1
    with pytest.raises(InvalidInput, match="closed"):
        read_inventory(conn)


# -- handles: Connection.handle is the one place a pyVmomi handle is made ----------------


def test_a_handle_reads_what_plain_pyvmomi_reads(conn: Any, vm: Any) -> None:
    handle = conn.handle(vim.VirtualMachine, vm._moId)
    assert isinstance(handle, vim.VirtualMachine)
    assert handle._moId == vm._moId
    assert conn.call("read a VM name", lambda: handle.name) == vm.name
    store = vm.datastore[0]
    assert conn.call("read a datastore name", lambda: conn.handle(vim.Datastore, store._moId).name) == (
        store.name
    )
    assert vm_object(conn, vm._moId)._moId == vm._moId  # the VM helper goes through it


@pytest.mark.parametrize(
    ("kind", "moref", "message"),
    [
        (vim.vm.ConfigSpec, "vm-1", "managed object type such as vim.VirtualMachine, not vim.vm.ConfigSpec"),
        (
            "VirtualMachine",
            "vm-1",
            "managed object type such as vim.VirtualMachine, not str 'VirtualMachine'",
        ),
        (None, "vm-1", "managed object type such as vim.VirtualMachine, not NoneType None"),
        (vim.VirtualMachine, 42, "the moref of a vim.VirtualMachine must be str, not int 42"),
        (vim.VirtualMachine, "", "'' is not a managed object reference"),
        (vim.VirtualMachine, "vm-1; drop", "'vm-1; drop' is not a managed object reference"),
        (vim.VirtualMachine, "vm-1\n", "is not a managed object reference"),
        (vim.VirtualMachine, "x" * 1025, "is not a managed object reference"),
    ],
)
def test_a_handle_of_what_is_not_a_managed_object_is_refused(
    conn: Any, kind: Any, moref: Any, message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        conn.handle(kind, moref)


def test_a_handle_of_an_unknown_moref_is_not_found_at_first_use(conn: Any) -> None:
    handle = conn.handle(vim.VirtualMachine, "vm-987654")  # a thin reference: no round trip yet
    with pytest.raises(NotFound, match="read a VM name") as caught:
        conn.call("read a VM name", lambda: handle.name)
    assert caught.value.fault == "ManagedObjectNotFound"


def test_a_handle_on_a_closed_connection_is_refused(conn: Any, vm: Any) -> None:
    conn.close()
    with pytest.raises(InvalidInput, match=f"VirtualMachine {vm._moId}: the connection to .* is closed"):
        conn.handle(vim.VirtualMachine, vm._moId)
