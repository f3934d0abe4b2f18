"""Logs carry context as fields and never a secret."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from vsphere_replicator.connection import connect
from vsphere_replicator.logs import REDACTED, configure_logging, get_logger, redact_secrets, redact_text


def test_the_processor_redacts_keys_urls_and_cookies() -> None:
    event = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "password": "p",
            "nested": {"token": "t", "ok": 1},
            "url": "https://h/?password=abc&x=1",
            "header": 'vmware_soap_session="52abcdef"; Path=/',
        },
    )
    assert event["password"] == REDACTED and event["nested"] == {"token": REDACTED, "ok": 1}
    assert "abc" not in event["url"] and "52abcdef" not in event["header"]


def test_bound_context_and_redaction_reach_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    get_logger(vm="web-01", disk=2000).warning("something", password="hunter2")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["vm"] == "web-01" and line["disk"] == 2000 and line["password"] == REDACTED


def test_a_whole_session_logs_no_secret(lab: Any, control: Any) -> None:
    with (
        capture_logs() as logs,
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn,
    ):
        control.expire_sessions()
        conn.content.about  # noqa: B018 - cached; the next call needs the session
        from vsphere_replicator.inventory import read_inventory

        read_inventory(conn)
    text = repr(logs)
    assert lab.password not in text and "vmware_soap_session" not in text
    assert any(e["event"] == "session_expired_relogin" for e in logs)


# (text carrying a secret, the part of it that must not survive, what must survive around it)
SECRETS_IN_TEXT = [
    ("password=ab&Zq9 next=1", "Zq9", "next=1"),
    ("https://h/sdk?password=ab;cd,Zq9", "Zq9", "https://h/sdk?password="),
    ('{"password": "x y Zq9", "user": "u"}', "Zq9", '"user": "u"'),
    ("{'pwd': 'hunter2', 'host': 'h'}", "hunter2", "'host': 'h'"),
    (r"body={\"password\": \"hunter2\", \"n\": 1}", "hunter2", "body="),
    ("<userName>root</userName><password>s3cr&amp;t</password>", "s3cr", "<userName>root</userName>"),
    ('<ns0:password xsi:type="xsd:string">hunter2</ns0:password>', "hunter2", "</ns0:password>"),
    ("fetch https://admin:p@ss:w0rd@vc.example/folder", "w0rd", "@vc.example/folder"),
    ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy", "Authorization:"),
    ("headers={'Authorization': 'Bearer abc.def.ghi'}", "ghi", "headers="),
    ("retry with Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig now", "eyJhbGciOiJIUzI1NiJ9", "now"),
    ("api_key=AKIA0123 then", "AKIA0123", "then"),
    ("apikey: zz-top-secret", "zz-top", "apikey"),
    ("credentials=user:hunter2", "hunter2", "credentials="),
    ("vmware-api-session-id: 0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0f1e2d3c4b5a", "vmware-api-session-id"),
    ('Set-Cookie: vmware_soap_session="52abcdef"; Path=/', "52abcdef", "Path=/"),
    ('vmware_soap_session="52abcdef"; Path=/', "52abcdef", "; Path=/"),
    ("export VSPHERE_PROD_PASSWORD=hunter2", "hunter2", "export VSPHERE_PROD_PASSWORD="),
    ("nbdkit --password hunter2 -r", "hunter2", "-r"),
    ("SmartConnect(host=h, pwd='hunter2', port=443)", "hunter2", "port=443"),
]


@pytest.mark.parametrize(("text", "secret", "kept"), SECRETS_IN_TEXT)
def test_a_secret_inside_text_is_redacted_to_the_end_of_its_value(text: str, secret: str, kept: str) -> None:
    event = redact_secrets(None, "info", {"event": "call", "detail": text, "nested": [{"note": text}]})
    rendered = json.dumps(event)
    assert secret not in rendered and REDACTED in event["detail"]
    assert kept in event["detail"]


@pytest.mark.parametrize(
    "text",
    [
        "passwordless login is off",
        "the password was refused",
        "export VSPHERE_PROD_PASSWORD (the profile is incomplete)",
        "bypass=true passes=3 compass=north",
        "Basic setup done; a token of thanks",
        "https://vc.example:443/sdk?dsName=a@b",
        "<key>2000</key><label>Hard disk 1</label>",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "key", ["api_key", "apikey", "credentials", "vmware-api-session-id", "sessionKey", "db_pass", "Cookie"]
)
def test_secret_keys_are_redacted(key: str) -> None:
    event = redact_secrets(None, "info", {"event": "x", key: "v4lue", "headers": {key: "v4lue"}})
    assert event[key] == REDACTED and event["headers"] == {key: REDACTED}


def test_keys_that_only_resemble_secrets_are_kept() -> None:
    event = redact_secrets(None, "info", {"event": "x", "passes": 3, "bypass": True})
    assert event == {"event": "x", "passes": 3, "bypass": True}


def _fail_with_password() -> None:
    password = "hunter2"  # a local: tracebacks must not show it either
    raise ValueError(f"vCenter refused password={password} for root")


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "console"])
def test_a_logged_traceback_is_scrubbed(json_lines: bool, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=json_lines)
    try:
        _fail_with_password()
    except ValueError:
        get_logger(vm="web-01").error("login_failed", exc_info=True)
    err = capsys.readouterr().err
    assert "ValueError" in err and "_fail_with_password" in err
    assert "hunter2" not in err
    if json_lines:  # structured, for log search: one dict per exception in the chain
        assert json.loads(err)["exception"][0]["exc_type"] == "ValueError"


def test_a_traceback_is_scrubbed_without_configuration(caplog: pytest.LogCaptureFixture) -> None:
    assert not structlog.is_configured()
    with caplog.at_level(logging.WARNING, logger="vsphere_replicator"):
        try:
            _fail_with_password()
        except ValueError:
            get_logger(vm="web-01").error("login_failed", exc_info=True)
    assert "Traceback" in caplog.text and "ValueError" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_traceback_is_scrubbed_under_the_applications_processors() -> None:
    with capture_logs() as logs:
        try:
            _fail_with_password()
        except ValueError:
            get_logger().error("login_failed", exc_info=True)
    assert "ValueError" in logs[0]["exception"] and "hunter2" not in repr(logs)


def test_logging_follows_sys_stderr_after_it_is_swapped_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest, notebooks and daemons replace sys.stderr; events go to the current one."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(json=True)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger().warning("after_the_swap")
    assert json.loads(second.getvalue())["event"] == "after_the_swap"
