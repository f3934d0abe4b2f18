"""A lease per protected VM: one operation at a time changes a replica.

The lease is an option on the replica itself (on the source while `protect`
has no replica yet), so every machine that can reach vCenter sees it. It
names its holder (host, process, operation, start) and expires unless
renewed; a background thread renews it while the holder works. Taking,
renewing and every write under it are compare-and-swaps on the VM's
`changeVersion` (options.py), and each write first checks that the lease is
still ours: a holder that was too slow to renew and lost its lease stops
with LeaseLost instead of writing over its successor.

An expired lease is taken over; so is one whose holder is a process on this
machine that no longer runs (a kill -9 needs no waiting). Times are
vCenter's clock, not ours, so proxies with skewed clocks agree.

A revert of the replica brings back the options saved with the snapshot,
lease included: `reclaim_after_revert` takes the lease back only if what is
there now is exactly what the snapshot held, i.e. nobody took it since.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import ConcurrentChange, InvalidInput, NotFound, ReplicatorError
from vsphere_replicator.logs import get_logger
from vsphere_replicator.replication import failpoints
from vsphere_replicator.replication.options import (
    PREFIX,
    VMOptions,
    read_options,
    read_snapshot_options,
    write_options_if_unchanged,
)

LEASE_KEY = PREFIX + "lease"
TTL_ENV = "VSPHERE_REPLICATOR_LEASE_TTL"
DEFAULT_TTL = timedelta(minutes=2)
_ATTEMPTS = 8  # compare-and-swap rounds before giving up on a VM that keeps changing


class Busy(ReplicatorError):
    """Another operation holds the VM's lease; `.holder` says who. Try again later."""

    def __init__(self, message: str, *, holder: LeaseHolder, vm: str | None = None) -> None:
        super().__init__(message, vm=vm)
        self.holder = holder


class LeaseLost(ReplicatorError):
    """Our lease was taken over (it expired before we renewed it); we stopped without writing."""


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a lease, from when, until when (vCenter's clock)."""

    token: str
    operation: str
    host: str
    pid: int
    process: str | None  # boot id and start time of the process: a reused pid is not the holder
    started: datetime
    expires: datetime

    def describe(self) -> str:
        since = f"{self.started:%Y-%m-%d %H:%M:%S}"
        return f"{self.operation} by process {self.pid} on {self.host} since {since} UTC"

    def encode(self) -> str:
        data = {**asdict(self), "started": self.started.isoformat(), "expires": self.expires.isoformat()}
        return json.dumps({"v": 1, **data}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str | None) -> LeaseHolder | None:
        """The holder a lease option names; None for no lease or one we cannot read (treated as free)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.pop("v", None) != 1:
                return None
            return cls(
                token=str(data["token"]),
                operation=str(data["operation"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                process=str(data["process"]) if data.get("process") else None,
                started=datetime.fromisoformat(data["started"]),
                expires=datetime.fromisoformat(data["expires"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def lease_ttl(environ: Mapping[str, str] | None = None) -> timedelta:
    """The lease lifetime: VSPHERE_REPLICATOR_LEASE_TTL seconds, or two minutes."""
    text = (os.environ if environ is None else environ).get(TTL_ENV)
    if not text:
        return DEFAULT_TTL
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        seconds = -1
    if not 1 <= seconds <= 86400:
        raise InvalidInput(f"{TTL_ENV} must be a number of seconds between 1 and 86400, not {text!r}")
    return timedelta(seconds=seconds)


def _process_identity(pid: int) -> str | None:
    """'<boot id>:<start time in ticks>' of a process on this machine, None if it does not run."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
    except (OSError, IndexError):
        return None
    return f"{boot}:{fields[19]}"


_live_tokens: weakref.WeakValueDictionary[str, Lease] = weakref.WeakValueDictionary()


def holder_is_dead(holder: LeaseHolder) -> bool:
    """True only when we can tell for sure: the holder ran on this machine and no longer does."""
    if holder.host != socket.gethostname() or holder.process is None:
        return False
    mine = _process_identity(os.getpid())
    if mine is None or mine.split(":")[0] != holder.process.split(":")[0]:
        return False  # another machine with the same name, or no /proc: wait for expiry
    if holder.pid == os.getpid() and holder.process == mine:
        return holder.token not in _live_tokens  # an operation of this process that was abandoned
    return _process_identity(holder.pid) != holder.process


class Lease:
    """The lease on one VM, held for one operation. Use as a context manager.

    `write()` is the only way to change the VM's replication options while
    it is held. Leaving the block releases it; leaving it through a
    simulated crash (failpoints.Crash) leaves it, as a killed process would.
    """

    def __init__(
        self,
        conn: Connection,
        moref: str,
        *,
        operation: str,
        vm: str | None = None,
        ttl: timedelta | None = None,
    ) -> None:
        self.conn = conn
        self.moref = moref
        self.operation = operation
        self.vm = vm or moref
        self.ttl = ttl or lease_ttl()
        self.token = uuid.uuid4().hex
        self.holder: LeaseHolder | None = None
        self._offset = timedelta(0)  # vCenter's clock minus ours
        self._lock = threading.RLock()  # one writer at a time in this process: renewals wait
        self._stop = threading.Event()
        self._lost: LeaseLost | None = None
        self._renewer: threading.Thread | None = None
        self._log = get_logger(vm=self.vm, operation=operation)

    # -- clock ---------------------------------------------------------------

    def _sync_clock(self) -> None:
        si = self.conn.service_instance
        before = datetime.now(UTC)
        server: datetime = self.conn.call("read vCenter's clock", si.CurrentTime)
        after = datetime.now(UTC)
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        self._offset = server - (before + (after - before) / 2)

    def now(self) -> datetime:
        """vCenter's time, as far as we can tell."""
        return datetime.now(UTC) + self._offset

    # -- taking and giving back ---------------------------------------------

    def acquire(self) -> Lease:
        """Take the lease, or raise Busy naming who holds it."""
        self._sync_clock()
        # Known to be alive before it is written: another thread of this process must never
        # read our fresh lease and judge its holder dead.
        _live_tokens[self.token] = self
        try:
            return self._acquire()
        except BaseException:
            _live_tokens.pop(self.token, None)
            raise

    def _acquire(self) -> Lease:
        for _ in range(_ATTEMPTS):
            current = read_options(self.conn, self.moref)
            held = LeaseHolder.decode(current.values.get(LEASE_KEY))
            if held is not None and held.token != self.token:
                if held.expires > self.now() and not holder_is_dead(held):
                    left = (held.expires - self.now()).total_seconds()
                    raise Busy(
                        f"{self.vm} is busy: {held.describe()} (its lease runs {left:.0f} s more "
                        "unless renewed); try again when it is done",
                        holder=held,
                        vm=self.vm,
                    )
                why = "its holder process is gone" if held.expires > self.now() else "it expired"
                self._log.warning(
                    "lease_taken_over", previous=held.describe(), reason=why, expires=held.expires.isoformat()
                )
            mine = self._holder()
            try:
                write_options_if_unchanged(
                    self.conn, self.moref, {LEASE_KEY: mine.encode()}, version=current.version, vm=self.vm
                )
            except ConcurrentChange:
                continue
            self.holder = mine
            self._start_renewing()
            return self
        raise Busy(
            f"{self.vm} is busy: its configuration kept changing while we tried to take its lease",
            holder=self._holder(),
            vm=self.vm,
        )

    def _holder(self) -> LeaseHolder:
        started = self.holder.started if self.holder else self.now()
        return LeaseHolder(
            token=self.token,
            operation=self.operation,
            host=socket.gethostname(),
            pid=os.getpid(),
            process=_process_identity(os.getpid()),
            started=started,
            expires=self.now() + self.ttl,
        )

    def release(self) -> None:
        """Give the lease back (best effort: an unreleased lease simply expires)."""
        self._stop_renewing()
        _live_tokens.pop(self.token, None)
        if self.holder is None or self._lost is not None:
            return
        try:
            self.write({LEASE_KEY: ""}, renew=False)
        except NotFound:
            pass  # the VM is gone (deleted under the lease): there is nothing to give back
        except ReplicatorError as exc:
            self._log.warning("lease_not_released", error=str(exc))
        self.holder = None

    def __enter__(self) -> Lease:
        return self.acquire() if self.holder is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, failpoints.Crash):
            self._stop_renewing()  # a dead process renews nothing and releases nothing
            _live_tokens.pop(self.token, None)
            return
        self.release()

    # -- writing under the lease ----------------------------------------------

    def check(self) -> None:
        """Raise LeaseLost if the renewer found the lease taken over."""
        if self._lost is not None:
            raise self._lost

    def _ours(self, current: VMOptions) -> None:
        held = LeaseHolder.decode(current.values.get(LEASE_KEY))
        if held is None or held.token != self.token:
            who = held.describe() if held else "nobody"
            self._lost = LeaseLost(
                f"{self.vm}: our lease for {self.operation} was taken over (now held by {who}); "
                "stopped without writing",
                vm=self.vm,
            )
            raise self._lost

    def write(self, changes: Mapping[str, str], *, renew: bool = True) -> None:
        """Apply option `changes` if we still hold the lease (and renew it in the same write)."""
        if self.holder is None:
            raise LeaseLost(f"{self.vm}: the lease for {self.operation} is not held", vm=self.vm)
        with self._lock:
            self.check()
            for _ in range(_ATTEMPTS):
                current = read_options(self.conn, self.moref)
                self._ours(current)
                renewed = self._holder() if renew else None
                payload = dict(changes)
                if renewed is not None:
                    payload[LEASE_KEY] = renewed.encode()
                try:
                    write_options_if_unchanged(
                        self.conn, self.moref, payload, version=current.version, vm=self.vm
                    )
                except ConcurrentChange:
                    continue
                if renewed is not None:
                    self.holder = renewed
                return
            raise ConcurrentChange(
                f"{self.vm}: its configuration kept changing while we wrote our state", vm=self.vm
            )

    def reclaim_after_revert(self, snapshot_moref: str) -> None:
        """After reverting to a snapshot, take back the lease the revert replaced with the snapshot's.

        Only if what the VM holds now is what the snapshot saved: anything
        else means another operation took the lease in between (LeaseLost).
        """
        with self._lock:
            for _ in range(_ATTEMPTS):
                current = read_options(self.conn, self.moref)
                now = current.values.get(LEASE_KEY)
                saved = read_snapshot_options(self.conn, snapshot_moref).values.get(LEASE_KEY)
                held = LeaseHolder.decode(now)
                if now != saved and (held is None or held.token != self.token):
                    self._ours(current)  # raises LeaseLost
                renewed = self._holder()
                try:
                    write_options_if_unchanged(
                        self.conn,
                        self.moref,
                        {LEASE_KEY: renewed.encode()},
                        version=current.version,
                        vm=self.vm,
                    )
                except ConcurrentChange:
                    continue
                self.holder = renewed
                return
            raise ConcurrentChange(f"{self.vm}: its configuration kept changing after a revert", vm=self.vm)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off renewals (e.g. across a revert, until `reclaim_after_revert`)."""
        with self._lock:
            yield

    # -- renewing --------------------------------------------------------------

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self.vm}", daemon=True)
        self._renewer.start()

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=60)
        self._renewer = None

    def _renew_loop(self) -> None:
        period = self.ttl.total_seconds() / 4
        while not self._stop.wait(period):
            # A write of ours in flight renews the lease itself. Waiting behind it (a call can take up
            # to the connection's timeout, retried) would only stall this thread silently: the
            # renewal is put off to the next period, and said, with when the lease runs out.
            if not self._lock.acquire(timeout=period):
                expires = self.holder.expires.isoformat() if self.holder else None
                self._log.warning("lease_renewal_deferred", waited=period, expires=expires)
                continue
            try:
                if self._stop.is_set():
                    return
                self.write({})
            except LeaseLost as exc:
                self._log.error("lease_lost", error=str(exc))
                return
            except ReplicatorError as exc:  # vCenter unreachable for a moment: try again next period
                self._log.warning("lease_not_renewed", error=str(exc))
            finally:
                self._lock.release()


def lease_holder(values: Mapping[str, str]) -> LeaseHolder | None:
    """The holder named by a VM's options, if any (expired or not)."""
    return LeaseHolder.decode(values.get(LEASE_KEY))


def is_live(holder: LeaseHolder | None, now: datetime) -> bool:
    return holder is not None and holder.expires > now and not holder_is_dead(holder)
