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

import pytest

from tests.cassette import CASSETTES, MASK, RECORDING, endpoint, recorder
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


def test_no_cassette_holds_a_password_or_session_cookie() -> None:
    texts = [p.read_text() for p in CASSETTES.glob("*.yaml")]
    assert len(texts) >= 3
    for text in texts:
        assert not re.search(r"<password[^>]*>(?!\*+</password>)[^<]*</password>", text)
        assert not re.search(r'vmware_soap_session="?(?!\*)[0-9a-zA-Z]{8,}', text)
        assert not re.search(r"^\s+cookie:", text, re.MULTILINE | re.IGNORECASE)  # request cookies filtered
