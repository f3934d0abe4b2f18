"""No SOAP call blocks for ever, and the lease renewer does not stall silently behind one (issue 10).

The 24-VM fleet run had a worker thread blocked in a SOAP send for over ten
minutes while its lease renewer waited behind it. Every session has a
socket timeout (`timeout`, VSPHERE_TIMEOUT, 180 s by default); a renewal
that finds a write of ours in flight (which renews the lease itself) is put
off to the next period and logged, never queued behind it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from vsphere_replicator.connection import SOAP_TIMEOUT_SECONDS, connect, settings_from
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.inventory import get_vm
from vsphere_replicator.lab import LabInfo, running_lab
from vsphere_replicator.replication.lease import LEASE_KEY, Lease
from vsphere_replicator.replication.options import read_options

PROFILE = {"VSPHERE_HOST": "vc.example", "VSPHERE_USER": "u", "VSPHERE_PASSWORD": "p"}


@pytest.mark.parametrize(
    ("environ", "argument", "expected"),
    [
        ({}, None, SOAP_TIMEOUT_SECONDS),
        ({"VSPHERE_TIMEOUT": "45"}, None, 45),
        ({"VSPHERE_TIMEOUT": "3m"}, None, 180),
        ({"VSPHERE_TIMEOUT": "3m"}, 60.0, 60),
    ],
)
def test_the_soap_timeout_comes_from_the_argument_else_the_profile_else_the_default(
    environ: dict[str, str], argument: float | None, expected: float
) -> None:
    assert settings_from(environ={**PROFILE, **environ}, timeout=argument).timeout == expected


def test_a_profiles_timeout_is_read_from_its_own_variable() -> None:
    prod = {"VSPHERE_PROD_HOST": "vc.b", "VSPHERE_PROD_USER": "u", "VSPHERE_PROD_PASSWORD": "p"}
    environ = {**PROFILE, **prod, "VSPHERE_TIMEOUT": "40", "VSPHERE_PROD_TIMEOUT": "90"}
    assert settings_from(environ=environ, profile="prod").timeout == 90


@pytest.mark.parametrize("text", ["soon", "0", "30", "2h", "-5"])
def test_a_timeout_no_task_wait_fits_in_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"VSPHERE_TIMEOUT|SOAP timeout"):
        settings_from(environ={**PROFILE, "VSPHERE_TIMEOUT": text})


@pytest.fixture(scope="module")
def tiny_lab() -> Iterator[LabInfo]:
    with running_lab(vms=2, disk_size=1 << 20) as info:
        yield info


def test_every_soap_connection_of_a_session_carries_the_timeout(tiny_lab: LabInfo) -> None:
    lab = tiny_lab
    with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file, timeout=42) as conn:
        conn.content.rootFolder.name  # noqa: B018 - one SOAP call, so the pool holds a connection
        stub = conn.service_instance._stub
        assert stub.schemeArgs["timeout"] == 42
        assert all(pooled.timeout == 42 for pooled, _ in stub.pool)
        assert all(pooled.sock.gettimeout() == 42 for pooled, _ in stub.pool if pooled.sock is not None)


def test_a_renewal_behind_a_write_in_flight_is_put_off_and_said_then_resumes(tiny_lab: LabInfo) -> None:
    lab = tiny_lab
    with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn:
        vm = get_vm(conn, "lab-vm-0002")
        with (
            capture_logs() as logs,  # around the lease: its logger is bound when it is made
            Lease(conn, vm.moref, operation="test", vm=vm.name, ttl=timedelta(seconds=2)) as lease,
        ):
            first = lease.holder
            assert first is not None
            with lease.exclusive():  # what a write stuck on the network holds
                time.sleep(2.2)  # the renewer (every 0.5 s) waits 0.5 s for it each time
            deferred = [e for e in logs if e["event"] == "lease_renewal_deferred"]
            assert deferred and deferred[0]["waited"] == 0.5
            deadline = time.monotonic() + 10
            while lease.holder is first and time.monotonic() < deadline:
                time.sleep(0.1)
            assert lease.holder is not first and lease.holder is not None
            assert lease.holder.expires > first.expires  # renewed once the way was free
        assert LEASE_KEY not in read_options(conn, vm.moref).values  # given back
