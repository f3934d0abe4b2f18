"""One retry policy and one session renewal, shared by SOAP calls and datastore HTTP reads.

The policy (`vsphere_replicator.retry.RetryPolicy`) decides how many tries and how long
between them; `Connection.renewing_once` logs in again once when vCenter says the session
expired. These tests hold both paths to the same rules against the lab, and compare the
bytes read with the bytes the lab wrote.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests import labutil
from vsphere_replicator.connection import Connection, connect
from vsphere_replicator.errors import AuthenticationFailed, ConnectionFailed
from vsphere_replicator.inventory import get_vm, read_inventory
from vsphere_replicator.retry import RetryPolicy, is_transient
from vsphere_replicator.transport import DatastoreHTTPSource, TransportError
from vsphere_replicator.transport.http import flat_extent_path, read_datastore_file


def lab_connection(lab: Any, policy: RetryPolicy) -> Connection:
    return connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file, retry=policy)


@pytest.fixture
def waits() -> list[float]:
    """The waits the policy asked for, recorded instead of slept."""
    return []


@pytest.fixture
def recording(lab: Any, waits: list[float]) -> Iterator[Connection]:
    """A connection whose policy records its waits, with no jitter so they are exact."""
    with lab_connection(lab, RetryPolicy(jitter=0, sleep=waits.append)) as connection:
        yield connection


def expire_again_after_renewal(conn: Connection, control: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make vCenter expire every session again right after each renewal logs in."""
    renew = conn.renew_session

    def renew_then_expire(seen: int | None = None) -> None:
        renew(seen)
        control.expire_sessions()

    monkeypatch.setattr(conn, "renew_session", renew_then_expire)


# -- the policy itself, without a lab ------------------------------------------------------------


def test_waits_double_from_initial_wait_up_to_max_wait() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=6, initial_wait=0.5, max_wait=4.0, jitter=0, sleep=waits.append)
    failures = iter([ConnectionResetError("reset")] * 5)

    def flaky() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "done"

    log = _Log()
    assert policy.retrying(log, "test_retry")(flaky) == "done"
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [(event, fields["attempt"], fields["error"]) for event, fields in log.events] == [
        ("test_retry", n, "ConnectionResetError") for n in range(1, 6)
    ]


def test_jitter_adds_at_most_its_share_to_each_wait() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=4, initial_wait=1.0, max_wait=8.0, jitter=0.5, sleep=waits.append)
    with pytest.raises(ConnectionResetError):
        policy.retrying(_Log(), "test_retry")(_always(ConnectionResetError("reset")))
    assert len(waits) == 3
    for wait, base in zip(waits, (1.0, 2.0, 4.0), strict=True):
        assert base <= wait <= base + 0.5


@pytest.mark.parametrize(
    "error",
    [ssl.SSLCertVerificationError("certificate verify failed"), ValueError("bad"), PermissionError("no")],
    ids=["certificate", "value", "permission"],
)
def test_permanent_errors_are_tried_once(error: Exception) -> None:
    waits: list[float] = []
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise error

    assert not is_transient(error)
    with pytest.raises(type(error)):
        RetryPolicy(sleep=waits.append).retrying(_Log(), "test_retry")(fails)
    assert calls == [1] and waits == []


@pytest.mark.parametrize(
    "error",
    [ConnectionResetError(), TimeoutError(), http.client.IncompleteRead(b"x", 10), ssl.SSLEOFError()],
    ids=["reset", "timeout", "cut-short", "tls-eof"],
)
def test_network_errors_and_cut_answers_are_transient(error: Exception) -> None:
    assert is_transient(error)


def test_a_call_that_changes_state_is_tried_once() -> None:
    waits: list[float] = []
    log = _Log()
    with pytest.raises(ConnectionResetError):
        RetryPolicy(sleep=waits.append).retrying(log, "test_retry", idempotent=False)(
            _always(ConnectionResetError("reset"))
        )
    assert waits == [] and log.events == []


# -- datastore HTTP reads, against the lab -----------------------------------------------------


def test_a_range_read_survives_an_expired_session_and_a_dropped_connection(
    lab: Any, recording: Connection, control: Any, off_vm_name: str, waits: list[float]
) -> None:
    written = control.write_random(off_vm_name, offset=1 << 20, length=300_000, seed=21)
    disk = get_vm(recording, off_vm_name).disks[0]
    control.expire_sessions()
    control.drop_connections(count=1, path="folder")
    control.reset_stats()
    with capture_logs() as logs:
        source = DatastoreHTTPSource(recording, disk.file_name, disk.capacity, datacenter=lab.datacenter)
        data = source.read(1 << 20, 300_000)
        source.close()
    assert data == written
    stats = control.stats()
    # refused (401), renewed with one Login, cut half-way, then read whole
    assert stats["methods"].get("Login") == 1 and stats["folder_requests"] == 3
    assert waits == [0.5]
    events = [e["event"] for e in logs]
    assert events.count("session_expired_relogin") == 1 and events.count("range_read_retry") == 1
    assert control.faults() == []


def test_a_second_expiry_right_after_renewal_is_an_error_not_a_loop(
    lab: Any, recording: Connection, control: Any, vm_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = get_vm(recording, vm_name).disks[0]
    source = DatastoreHTTPSource(recording, disk.file_name, disk.capacity, datacenter=lab.datacenter)
    expire_again_after_renewal(recording, control, monkeypatch)
    control.expire_sessions()
    control.reset_stats()
    with pytest.raises(TransportError, match="answered 401 again after the session was renewed"):
        source.read(0, 4096)
    stats = control.stats()
    assert stats["methods"].get("Login") == 1 and stats["folder_requests"] == 2
    source.close()


def test_the_number_of_read_attempts_comes_from_the_policy(
    lab: Any, control: Any, off_vm_name: str, waits: list[float]
) -> None:
    with lab_connection(lab, RetryPolicy(attempts=2, jitter=0, sleep=waits.append)) as conn:
        disk = get_vm(conn, off_vm_name).disks[0]
        source = DatastoreHTTPSource(conn, disk.file_name, disk.capacity, datacenter=lab.datacenter)
        control.drop_connections(count=5, path="folder")
        control.reset_stats()
        try:
            with pytest.raises(TransportError, match="failed 2 times"):
                source.read(0, 65536)
            assert control.stats()["folder_requests"] == 2 and waits == [0.5]
        finally:
            control.clear_faults()
        written = control.write_random(off_vm_name, offset=0, length=65536, seed=22)
        assert source.read(0, 65536) == written  # the pool kept no broken connection
        source.close()


def test_the_same_policy_bounds_soap_calls(lab: Any, control: Any, waits: list[float]) -> None:
    with lab_connection(lab, RetryPolicy(attempts=2, jitter=0, sleep=waits.append)) as conn:
        control.drop_connections(count=5, path="sdk")
        control.reset_stats()
        try:
            with pytest.raises(ConnectionFailed):
                read_inventory(conn)
            assert control.stats()["soap_requests"] == 2 and waits == [0.5]
        finally:
            control.clear_faults()


def test_a_second_soap_expiry_right_after_renewal_is_an_error(
    recording: Connection, control: Any, vm_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expire_again_after_renewal(recording, control, monkeypatch)
    control.expire_sessions()
    control.reset_stats()
    with pytest.raises(AuthenticationFailed, match="not authenticated"):
        get_vm(recording, vm_name)
    assert control.stats()["methods"].get("Login") == 1


def test_a_small_file_read_survives_an_expired_session_and_a_dropped_connection(
    lab: Any, si: Any, recording: Connection, control: Any, off_vm_name: str, waits: list[float]
) -> None:
    datastore, flat = flat_extent_path(get_vm(recording, off_vm_name).disks[0].file_name)
    descriptor = flat.removesuffix("-flat.vmdk") + ".vmdk"  # small: a cut answer misses its end
    expected = labutil.folder_session(lab, si).get(
        f"https://{lab.host}:{lab.port}/folder/{descriptor}",
        params={"dcPath": lab.datacenter, "dsName": datastore},
        timeout=30,
    )
    assert expected.status_code == 200 and 0 < len(expected.content) < 4096
    control.expire_sessions()
    control.drop_connections(count=1, path="folder")
    control.reset_stats()
    with capture_logs() as logs:
        data = read_datastore_file(recording, datastore, descriptor, datacenter=lab.datacenter)
    assert data == expected.content
    assert control.stats()["methods"].get("Login") == 1 and control.stats()["folder_requests"] == 3
    assert waits == [0.5] and [e["event"] for e in logs].count("folder_read_retry") == 1


def test_passwords_never_reach_the_retry_logs(lab: Any, control: Any, off_vm_name: str) -> None:
    with capture_logs() as logs, lab_connection(lab, RetryPolicy(sleep=lambda _: None)) as conn:
        disk = get_vm(conn, off_vm_name).disks[0]
        source = DatastoreHTTPSource(conn, disk.file_name, disk.capacity, datacenter=lab.datacenter)
        control.expire_sessions()
        control.drop_connections(count=1, path="folder")
        source.read(0, 512)
        control.drop_connections(count=1, path="sdk")
        get_vm(conn, off_vm_name)
        source.close()
    assert {"session_expired_relogin", "range_read_retry", "call_retry"} <= {e["event"] for e in logs}
    assert lab.password not in repr(logs)


# -- helpers ------------------------------------------------------------------------------------


class _Log:
    """A logger that records (event, fields) for the policy's own unit tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def _always(error: Exception) -> Any:
    def fails() -> None:
        raise error

    return fails
