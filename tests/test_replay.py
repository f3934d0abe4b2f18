"""Fast tests that need no lab: recorded lab conversations, replayed.

Re-record (needs the lab's toolchain) with:

    VR_RECORD=1 python3 -m pytest tests/test_replay.py
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

from tests.cassette import CASSETTES, MASK, RECORDING, endpoint, recorder, scrub, scrub_response
from vsphere_replicator.connection import Connection, RetryPolicy, connect
from vsphere_replicator.errors import TaskFailed
from vsphere_replicator.inventory import get_vm, read_inventory
from vsphere_replicator.snapshots import create_snapshot, remove_snapshot

REPLAY_PASSWORD = "replayed-" + MASK


def _thumbprint(host: str, port: int, ca_file: str) -> str:
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((host, port)) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@contextmanager
def conversation(name: str) -> Iterator[tuple[Connection, Any]]:
    """A library connection inside a cassette; a lab (and its control) only when recording."""
    if RECORDING:
        from vsphere_replicator.lab import LabControl, running_lab

        with running_lab(vms=3, disks_per_vm=1, disk_size=8 << 20) as lab:
            where = endpoint(
                name,
                {
                    "host": lab.host,
                    "port": lab.port,
                    "user": lab.user,
                    "thumbprint": _thumbprint(lab.host, lab.port, lab.ca_file),
                },
            )
            with (
                recorder(name),
                connect(
                    where["host"],
                    where["user"],
                    lab.password,
                    port=where["port"],
                    thumbprint=where["thumbprint"],
                ) as conn,
            ):
                yield conn, LabControl(lab)
        return
    where = endpoint(name)
    with (
        recorder(name),
        connect(
            where["host"],
            where["user"],
            REPLAY_PASSWORD,
            port=where["port"],
            thumbprint=where["thumbprint"],
            retry=RetryPolicy(sleep=lambda _: None),
        ) as conn,
    ):
        yield conn, None


def test_replayed_inventory_read() -> None:
    with conversation("inventory") as (conn, _):
        vms = read_inventory(conn)
    assert [v.name for v in vms] == ["lab-vm-0001", "lab-vm-0002", "lab-vm-0003"]
    assert all(v.disks[0].capacity == 8 << 20 for v in vms)


def test_replayed_snapshot_create_and_remove() -> None:
    with conversation("snapshot") as (conn, _):
        result = create_snapshot(conn, "lab-vm-0002", "replayed", description="cassette")
        assert result.snapshot.name == "vr-replayed"
        after = remove_snapshot(conn, "lab-vm-0002", result.snapshot)
    assert after.snapshots == ()


def test_replayed_task_failure_carries_the_fault() -> None:
    with conversation("task-failure") as (conn, control):
        if control is not None:
            control.fail_method("CreateSnapshot_Task", "FileFault", message="datastore is read-only")
        with pytest.raises(TaskFailed) as err:
            create_snapshot(conn, "lab-vm-0001", "doomed")
        assert get_vm(conn, "lab-vm-0001").snapshots == ()
    assert err.value.fault == "FileFault" and "read-only" in str(err.value)


SESSION_KEY_HOLDERS = re.compile(r"(Login\w*|ImpersonateUser|CloneSession)Response$")
SECRET_ELEMENTS = {"password", "sessionId", "sessionID"}
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
# libyaml's safe loader reads the cassettes ten times faster than the pure-Python one.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _secrets_in_soap(body: str) -> list[str]:
    """Values in a SOAP body that are secrets: read with an XML parser, not the scrubber's patterns."""
    if "<soapenv:Envelope" not in body:
        return []
    found = []
    for element in ElementTree.fromstring(body).iter():
        sessions = [element] if element.get(XSI_TYPE, "").endswith("UserSession") else []
        if SESSION_KEY_HOLDERS.match(_local(element.tag)):
            sessions += [child for child in element if _local(child.tag) == "returnval"]
        for session in sessions:
            found += [k.text or "" for k in session if _local(k.tag) == "key" and k.text != MASK]
        if _local(element.tag) in SECRET_ELEMENTS and element.text != MASK:
            found.append(element.text or "")
    return found


def _cookies(text: str) -> list[str]:
    return [v for v in re.findall(r'vmware_soap_session=("[^"]*"|[^;\s]*)', text) if v != f'"{MASK}"']


def _cassette_texts(interaction: dict[str, Any]) -> list[str]:
    request, response = interaction["request"], interaction["response"]
    headers = [v for h in (request["headers"], response["headers"]) for vs in h.values() for v in vs]
    return [request["body"] or "", response["body"]["string"], *headers]


def test_no_cassette_holds_a_password_session_key_or_cookie() -> None:
    cassettes = sorted(CASSETTES.glob("*.yaml"))
    assert len(cassettes) >= 3
    logins = 0
    for path in cassettes:
        for interaction in yaml.load(path.read_text(), Loader=SAFE_LOADER)["interactions"]:
            request, response = interaction["request"], interaction["response"]
            where = f"{path.name}: {request['body'][:300] if request['body'] else request['uri']}"
            assert not _secrets_in_soap(request["body"] or ""), where
            assert not _secrets_in_soap(response["body"]["string"]), where
            assert not [c for text in _cassette_texts(interaction) for c in _cookies(text)], where
            sent = {name.lower() for name in request["headers"]}
            assert not sent & {"cookie", "authorization", "vmware-api-session-id"}, where
            logins += "<Login " in (request["body"] or "")
    assert logins >= 3  # the check above saw the logins it is about


def test_the_scrubber_masks_what_the_cassette_check_looks_for() -> None:
    """A login answer, a current session and a cookie in a body, as vCenter sends them."""
    body = (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<LoginResponse xmlns="urn:vim25"><returnval><key>52aa-live</key><userName>u</userName></returnval>'
        '</LoginResponse><val xsi:type="UserSession"><key>52bb-live</key></val>'
        "<SessionIsActive><sessionID>52cc-live</sessionID></SessionIsActive>"
        '<note>vmware_soap_session="52dd-live"; Path=/</note></soapenv:Body></soapenv:Envelope>'
    )
    assert len(_secrets_in_soap(body)) == 3 and len(_cookies(body)) == 1
    clean = scrub(body.encode()).decode()
    assert not _secrets_in_soap(clean) and not _cookies(clean) and "-live" not in clean
    response = {
        "headers": {"Set-Cookie": ['vmware_soap_session="52ee-live"; HttpOnly']},
        "body": {"string": b""},
    }
    assert scrub_response(response)["headers"]["Set-Cookie"] == [f'vmware_soap_session="{MASK}"; HttpOnly']
