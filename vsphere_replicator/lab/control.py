"""Drive a running lab: guest writes, CBT resets, fault injection, statistics."""

from __future__ import annotations

import os
import random
from typing import Any

import requests

from vsphere_replicator.errors import LabError
from vsphere_replicator.lab.process import LabInfo


class LabControl:
    """Client of the lab's own API (`/lab/v1/`), TLS-verified against the lab's CA."""

    def __init__(self, info: LabInfo, timeout: float = 120.0) -> None:
        self._base = f"https://{info.host}:{info.port}/lab/v1/"
        self._timeout = timeout
        self._session = requests.Session()
        # These machines set REQUESTS_CA_BUNDLE; requests would let it replace the lab's CA.
        self._session.trust_env = False
        self._session.verify = info.ca_file
        self._session.auth = (info.user, info.password)

    @property
    def session(self) -> requests.Session:
        return self._session

    def _call(self, method: str, route: str, **kwargs: Any) -> Any:
        try:
            response = self._session.request(method, self._base + route, timeout=self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise LabError(f"the lab did not answer {method} {route}: {type(exc).__name__}") from exc
        if not response.ok:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError):
                message = response.text[:200]
            raise LabError(f"lab {route}: {message}")
        return response.json()

    def write(self, vm: str, data: bytes, *, offset: int, disk: int = 0) -> dict[str, Any]:
        """Write `data` into the VM's disk as its guest would (into the current state)."""
        result: dict[str, Any] = self._call(
            "POST",
            "write",
            params={"vm": vm, "disk": disk, "offset": offset},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return result

    def write_random(
        self, vm: str, *, offset: int, length: int, seed: int | None = None, disk: int = 0
    ) -> bytes:
        """Write `length` random bytes (reproducible with `seed`); returns them."""
        data = os.urandom(length) if seed is None else random.Random(seed).randbytes(length)
        self.write(vm, data, offset=offset, disk=disk)
        return data

    def cbt_reset(self, vm: str, disk: int | None = None) -> dict[str, Any]:
        """Regenerate the disks' tracking identity, as a CBT reset or host crash does."""
        params: dict[str, Any] = {"vm": vm}
        if disk is not None:
            params["disk"] = disk
        result: dict[str, Any] = self._call("POST", "cbt-reset", params=params)
        return result

    def inject_fault(self, kind: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "faults", json={"kind": kind, **params})
        return result

    def fail_method(
        self, method: str, fault: str, count: int = 1, message: str | None = None
    ) -> dict[str, Any]:
        """Make the next `count` calls of `method` fail with the vim25 fault `fault`."""
        params: dict[str, Any] = {"method": method, "fault": fault, "count": count}
        if message is not None:
            params["message"] = message
        return self.inject_fault("method", **params)

    def expire_sessions(self) -> dict[str, Any]:
        """Expire every session: the next call of each gets NotAuthenticated."""
        return self.inject_fault("expire-sessions")

    def drop_connections(self, count: int = 1, path: str = "any") -> dict[str, Any]:
        """Cut the next `count` responses (on `sdk`, `folder` or `any`) half-way."""
        return self.inject_fault("drop-connection", count=count, path=path)

    def slow_reads(self, delay_ms: int, count: int = 1) -> dict[str, Any]:
        """Delay the next `count` datastore reads by `delay_ms`."""
        return self.inject_fault("slow-reads", delay_ms=delay_ms, count=count)

    def leave_consolidation_needed(self, count: int = 1) -> dict[str, Any]:
        """Make the next `count` snapshot removals leave `runtime.consolidationNeeded` set."""
        return self.inject_fault("consolidation-needed", count=count)

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "faults")
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "status")
        return result

    def stats(self) -> dict[str, Any]:
        """SOAP requests per method and datastore reads since the last reset."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def reset_stats(self) -> None:
        self._call("DELETE", "stats")
