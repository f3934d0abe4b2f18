"""Sessions with vCenter: TLS verified, re-login on expiry, bounded retries.

`connect()` returns a `Connection`; every SOAP call the library makes goes
through `Connection.call()`, the one place where faults are translated:
transient network errors are retried under the connection's `RetryPolicy`
(vsphere_replicator.retry; only for calls that are safe to repeat), an
expired session is logged in again and the call retried once
(`Connection.renewing_once`, which the datastore HTTP reads use too), and
permanent faults (bad credentials, not found, permission) are never retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim
from pyVmomi.VmomiSupport import ManagedObject
from tenacity import Retrying

from vsphere_replicator.checks import check_int, check_text, check_type, shown
from vsphere_replicator.display import Shown
from vsphere_replicator.errors import AuthenticationFailed, ConnectionFailed, InvalidInput, ReplicatorError
from vsphere_replicator.faults import SOAP_ERRORS, fault_message, translate
from vsphere_replicator.logs import Logger, get_logger

# RetryPolicy lives in retry; `connection.RetryPolicy` stays importable for callers.
from vsphere_replicator.retry import RetryPolicy as RetryPolicy
from vsphere_replicator.retry import is_transient
from vsphere_replicator.units import parse_duration

T = TypeVar("T")
M = TypeVar("M", bound=ManagedObject)
_THUMBPRINT = re.compile(r"^[0-9a-f]{64}$")
_MOREF = re.compile(r"[^\s\x00-\x1f\x7f]{1,1024}")  # vcsim names datastores by their path


@dataclass(frozen=True, slots=True)
class ConnectionSettings(Shown):
    """Where and how to connect. The password never appears in repr."""

    host: str
    user: str
    password: str = field(repr=False)
    port: int = 443
    ca_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    # Seconds one SOAP call may wait on the network (each connect, send and receive): longer than the
    # task waits' 30 s WaitForUpdatesEx, so a call that never answers fails (and is retried) instead of
    # blocking its thread, and a lease renewal behind it, for ever.
    timeout: float = 180.0

    def __post_init__(self) -> None:
        check_text(self.host, "host")
        check_text(self.user, "user")
        check_type(self.password, str, "password", secret=True)
        check_int(self.port, "port", 1, 65535)
        check_text(self.ca_file, "ca_file", optional=True)
        check_text(self.thumbprint, "thumbprint", optional=True)
        check_type(self.insecure, bool, "insecure")
        check_type(self.timeout, (int, float), "timeout")
        if not MIN_SOAP_TIMEOUT <= self.timeout <= MAX_SOAP_TIMEOUT:
            raise InvalidInput(
                f"the SOAP timeout must be between {MIN_SOAP_TIMEOUT} and {MAX_SOAP_TIMEOUT} seconds "
                f"(longer than a task wait's {MIN_SOAP_TIMEOUT - 1} s), not {self.timeout}"
            )


def normalize_thumbprint(text: str) -> str:
    """'AB:CD:…' -> 'abcd…'; only SHA-256 (64 hex digits) is accepted."""
    value = text.replace(":", "").strip().lower()
    if not _THUMBPRINT.match(value):
        raise InvalidInput("a certificate thumbprint must be a SHA-256 digest: 64 hex digits, colons allowed")
    return value


SOAP_TIMEOUT_SECONDS = 180  # the default of ConnectionSettings.timeout
MIN_SOAP_TIMEOUT, MAX_SOAP_TIMEOUT = 31, 3600  # a task wait asks vCenter to answer within 30 s


def _network_reason(exc: BaseException) -> str:
    """'connection refused' for ConnectionRefusedError(111, 'Connection refused'): errno left out."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


class _PinnedContext(ssl.SSLContext):
    """Accepts exactly the certificate whose SHA-256 digest is `pin`, on every connection."""

    pin = ""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True)
        if der is None or hashlib.sha256(der).hexdigest() != self.pin:
            sock.close()
            raise ssl.SSLCertVerificationError("certificate does not match the pinned thumbprint")
        return sock


def tls_context(settings: ConnectionSettings) -> ssl.SSLContext:
    """Verification on unless `insecure`: a pinned thumbprint, a CA file, or the system's CAs."""
    if settings.insecure:
        get_logger(host=settings.host).warning("tls_verification_disabled")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if settings.thumbprint is not None:
        pinned = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
        pinned.check_hostname = False
        pinned.verify_mode = ssl.CERT_NONE  # the pin replaces the chain of trust
        pinned.pin = settings.thumbprint
        return pinned
    if settings.ca_file is not None and not os.path.isfile(settings.ca_file):
        raise InvalidInput(f"CA file {settings.ca_file} does not exist")
    return ssl.create_default_context(cafile=settings.ca_file)


@dataclass(frozen=True, slots=True)
class SessionSummary(Shown):
    """What a notebook shows for a Connection: where it is logged in and as whom, never a secret.

    `server` and `api_version` come from the content read at login (no
    round trip); `relogins` counts the times an expired session was renewed.
    """

    host: str
    port: int
    user: str
    server: str | None
    api_version: str | None
    logged_in: bool
    relogins: int
    tls: str

    _shown_title = "host"


class Connection:
    """A logged-in session with vCenter. Use as a context manager; `close()` logs out."""

    def __init__(self, settings: ConnectionSettings, retry: RetryPolicy | None = None) -> None:
        check_type(settings, ConnectionSettings, "settings")
        check_type(retry, RetryPolicy, "retry", optional=True)
        self.settings = settings
        self.retry = retry or RetryPolicy()
        self._si: Any = None
        self._content: Any = None
        self._renew_lock = threading.Lock()
        self._generation = 0
        try:
            self._si = self._retrying()(self._open)
        except ReplicatorError:
            raise
        except SOAP_ERRORS as exc:  # a network error still there when the retries ran out
            raise ConnectionFailed(
                f"cannot connect to {settings.host}:{settings.port}: {_network_reason(exc)}"
            ) from exc

    @property
    def _log(self) -> Logger:
        return get_logger(host=self.settings.host)

    # -- session -------------------------------------------------------------

    def _open(self) -> vim.ServiceInstance:
        s = self.settings
        try:
            si: vim.ServiceInstance = SmartConnect(
                host=s.host,
                port=s.port,
                user=s.user,
                pwd=s.password,
                sslContext=tls_context(s),
                # A call that never answers (a hung vCenter, a lost update) must fail and be
                # retried, not block forever: longer than any WaitForUpdatesEx wait we ask for.
                httpConnectionTimeout=s.timeout,
            )
            self._content = si.RetrieveContent()  # part of logging in: later reads use the cache
        except vim.fault.InvalidLogin as exc:
            raise AuthenticationFailed(
                f"connect to {s.host}: vCenter refused the user name or password", fault="InvalidLogin"
            ) from exc
        except vim.fault.HostConnectFault as exc:
            # pyVim wraps what went wrong on the wire (a cut response, a reset) in this fault:
            # a network error, retried by the policy like any other.
            raise ConnectionError(f"connect to {s.host}:{s.port}: {fault_message(exc)}") from exc
        except SOAP_ERRORS as exc:
            error = translate(exc, what=f"connect to {s.host}:{s.port}")
            if is_transient(exc):
                raise  # let the retry policy see the network error itself
            raise error from exc
        self._log.info("connected", port=s.port, user=s.user)
        return si

    @property
    def session_cookie(self) -> str:
        """The `Cookie` header value of this session, for the datastore HTTP endpoint. A secret."""
        cookie: str = self._si._stub.cookie
        return cookie

    def renew_session(self, seen: int | None = None) -> None:
        """Log in again on the same connection (after vCenter said the session expired).

        Threads that hit the expiry together log in once: `seen` is the
        session generation a caller failed with; if another thread renewed
        since, there is nothing to do.
        """
        with self._renew_lock:
            if seen is not None and seen != self._generation:
                return
            self._log.warning("session_expired_relogin")
            manager = self.content.sessionManager
            try:
                self._retrying()(
                    lambda: manager.Login(userName=self.settings.user, password=self.settings.password)
                )
            except vim.fault.InvalidLogin as exc:
                raise AuthenticationFailed(
                    f"log in to {self.settings.host} again: credentials refused", fault="InvalidLogin"
                ) from exc
            except SOAP_ERRORS as exc:
                raise translate(exc, what=f"log in to {self.settings.host} again") from exc
            self._generation += 1

    def summary(self) -> SessionSummary:
        """This session as plain data (what its notebook repr shows); reads nothing from vCenter."""
        s = self.settings
        about = getattr(self._content, "about", None)
        if s.insecure:
            tls = "not verified (insecure)"
        elif s.thumbprint:
            tls = "pinned thumbprint"
        elif s.ca_file:
            tls = f"CA file {s.ca_file}"
        else:
            tls = "system trust store"
        return SessionSummary(
            host=s.host,
            port=s.port,
            user=s.user,
            server=getattr(about, "fullName", None),
            api_version=getattr(about, "apiVersion", None),
            logged_in=self._si is not None,
            relogins=self._generation,
            tls=tls,
        )

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        self.summary()._repr_pretty_(p, cycle)

    @property
    def session_generation(self) -> int:
        """Bumped at every re-login: pass it back to renew_session so concurrent renewals happen once."""
        return self._generation

    @property
    def service_instance(self) -> vim.ServiceInstance:
        """The session's ServiceInstance, for the SOAP layers below the public API."""
        si: vim.ServiceInstance = self._si
        return si

    @property
    def content(self) -> Any:
        """The ServiceContent, read at login: its references never change."""
        return self._content

    # -- handles -------------------------------------------------------------

    def handle(self, kind: type[M], moref: str) -> M:
        """The pyVmomi handle of managed object `moref` of type `kind` on this session.

        `conn.handle(vim.VirtualMachine, "vm-42")` is typed `vim.VirtualMachine`.
        The one place handles are made (the layers below the public API use it;
        no handle crosses the API). Like govmomi's `object.NewCommon`, a handle
        is a thin reference: no round trip here, so a moref vCenter does not
        know surfaces as NotFound at the first call through it. A `kind` that is
        not a managed object type, a malformed moref or a closed connection
        raise InvalidInput.
        """
        if not (isinstance(kind, type) and issubclass(kind, ManagedObject)):
            given = kind.__name__ if isinstance(kind, type) else f"{type(kind).__name__} {shown(kind)}"
            raise InvalidInput(
                f"a handle is made for a managed object type such as vim.VirtualMachine, not {given}"
            )
        check_type(moref, str, f"the moref of a {kind.__name__}")
        if not _MOREF.fullmatch(moref):
            raise InvalidInput(f"{shown(moref)} is not a managed object reference (such as 'vm-42')")
        if self._si is None:
            raise InvalidInput(f"{kind.__name__} {moref}: the connection to {self.settings.host} is closed")
        return kind(moref, self._si._stub)

    def close(self) -> None:
        """Log out and drop the connection; safe to call twice."""
        if self._si is None:
            return
        with contextlib.suppress(*SOAP_ERRORS):  # an expired or broken session is gone already
            Disconnect(self._si)  # logs out
        self._si = None
        self._log.info("disconnected")

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------

    def _retrying(self, *, idempotent: bool = True) -> Retrying:
        return self.retry.retrying(self._log, "call_retry", idempotent=idempotent)

    def renewing_once(
        self, fn: Callable[[], T], *, expired: type[BaseException] | tuple[type[BaseException], ...]
    ) -> T:
        """Run `fn`; if it raises `expired` (the session is gone), log in again and run it once more.

        The one place a session is renewed for a call: SOAP calls pass
        `vim.fault.NotAuthenticated`, the datastore HTTP reads their 401/403.
        It never loops: an `expired` raised by the second run propagates, for
        the caller to turn into its own error. Callers that saw the same
        session expire log in once between them (see `renew_session`).
        Errors from logging in (AuthenticationFailed, …) propagate as raised.
        """
        generation = self._generation
        try:
            return fn()
        except expired:
            self.renew_session(seen=generation)
        return fn()

    def call(self, what: str, fn: Callable[[], T], *, idempotent: bool = True, vm: str | None = None) -> T:
        """Run one SOAP interaction `fn`, described by `what` in errors and logs.

        Transient errors are retried under `self.retry`; set `idempotent=False`
        for calls that change state: a network error after the request left
        may mean it ran, so they are not repeated. An expired session is
        renewed and the call run once more, whatever `idempotent` says:
        vCenter ran nothing then. A second expiry raises AuthenticationFailed.
        """
        if self._si is None:
            raise InvalidInput(f"{what}: the connection to {self.settings.host} is closed")
        try:
            return self.renewing_once(
                lambda: self._retrying(idempotent=idempotent)(fn), expired=vim.fault.NotAuthenticated
            )
        except SOAP_ERRORS as exc:
            raise translate(exc, what=what, vm=vm) from exc


_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def profile_prefix(profile: str | None) -> str:
    """'prod' -> 'VSPHERE_PROD_'; None -> 'VSPHERE_' (the default profile)."""
    if profile is None:
        return "VSPHERE_"
    if not _PROFILE_NAME.match(profile):
        raise InvalidInput(f"a profile name is letters, digits and '_' (it names variables), not {profile!r}")
    return f"VSPHERE_{profile.upper()}_"


def settings_from(
    host: str | None = None,
    user: str | None = None,
    password: str | None = None,
    *,
    port: int | None = None,
    ca_file: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    environ: Mapping[str, str] | None = None,
    profile: str | None = None,
    timeout: float | None = None,
) -> ConnectionSettings:
    """Settings from the arguments, completed from one environment profile and from nothing else.

    `environ` (default: `os.environ`) is the only mapping read. `profile=None`
    reads VSPHERE_HOST, VSPHERE_USER, VSPHERE_PASSWORD, VSPHERE_PORT,
    VSPHERE_CA_FILE, VSPHERE_THUMBPRINT, VSPHERE_TIMEOUT (seconds a SOAP call may
    wait on the network, "180" or "3m"); `profile="prod"` reads VSPHERE_PROD_HOST
    and so on, and never the unprefixed ones: completing one site's profile
    with another's would send that site's password, or trust its CA, for
    this host. A missing field raises InvalidInput naming the variable to set.
    """
    for name, value in (("host", host), ("user", user), ("ca_file", ca_file), ("thumbprint", thumbprint)):
        check_type(value, str, name, optional=True)
    check_type(password, str, "password", optional=True, secret=True)
    check_type(port, int, "port", optional=True)
    check_type(insecure, bool, "insecure")
    check_type(profile, str, "profile", optional=True)
    env = os.environ if environ is None else environ
    prefix = profile_prefix(profile)

    def read(name: str) -> str | None:
        return env.get(prefix + name) or None

    values = {
        "HOST": host or read("HOST"),
        "USER": user or read("USER"),
        "PASSWORD": password or read("PASSWORD"),
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        names = ", ".join(f"{n.lower()} (or export {prefix}{n})" for n in missing)
        where = f"profile {profile!r} is incomplete" if profile else "no vCenter to connect to"
        raise InvalidInput(f"{where}: give {names}")
    if port is None:
        port_text = read("PORT") or "443"
        if not (port_text.isdigit() and len(port_text) <= 5):
            raise InvalidInput(f"{prefix}PORT must be a port number, got {port_text!r}")
        port = int(port_text)
    if not 0 < port < 65536:
        raise InvalidInput(f"port must be between 1 and 65535, got {port}")
    pinned = thumbprint or read("THUMBPRINT")
    if timeout is None:
        timeout_text = read("TIMEOUT")
        timeout = _seconds(timeout_text, f"{prefix}TIMEOUT") if timeout_text else SOAP_TIMEOUT_SECONDS
    return ConnectionSettings(
        host=str(values["HOST"]),
        user=str(values["USER"]),
        password=str(values["PASSWORD"]),
        port=port,
        ca_file=ca_file or read("CA_FILE"),
        thumbprint=normalize_thumbprint(pinned) if pinned else None,
        insecure=insecure,
        timeout=timeout,
    )


def _seconds(text: str, name: str) -> float:
    """A number of seconds ("180") or a duration ("3m") from variable `name`; InvalidInput naming it."""
    if text.strip().isdigit() and len(text.strip()) <= 6:
        return float(text.strip())
    try:
        return parse_duration(text).total_seconds()
    except InvalidInput as exc:
        raise InvalidInput(f"{name} must be seconds (180) or a duration (3m), not {text!r}") from exc


def connect(
    host: str | None = None,
    user: str | None = None,
    password: str | None = None,
    *,
    port: int | None = None,
    ca_file: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    retry: RetryPolicy | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Connection:
    """Log in to vCenter. Arguments not given come from one environment profile (see `settings_from`).

    TLS is verified against `ca_file`, or a pinned SHA-256 `thumbprint`, or
    the system's CAs; only `insecure=True` turns verification off (logged).
    `timeout` is the seconds any SOAP call may wait on the network (default
    180, or VSPHERE_TIMEOUT): a call past it fails with a network error and
    is retried under `retry` like any other.
    Raises InvalidInput, TLSVerificationFailed, AuthenticationFailed or
    ConnectionFailed.
    """
    settings = settings_from(
        host,
        user,
        password,
        port=port,
        ca_file=ca_file,
        thumbprint=thumbprint,
        insecure=insecure,
        environ=environ,
        profile=profile,
        timeout=timeout,
    )
    return Connection(settings, retry)
