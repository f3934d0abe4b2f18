"""Logs carry context as fields and never a secret."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from structlog.testing import capture_logs

from vsphere_replicator.connection import connect
from vsphere_replicator.logs import REDACTED, configure_logging, get_logger, redact_secrets


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
