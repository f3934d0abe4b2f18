"""Drive a running lab: guest writes, CBT resets, fault injection, statistics."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from collections.abc import Callable
from typing import Any

import requests

from vsphere_replicator.checks import check_int, check_text, check_type
from vsphere_replicator.errors import InvalidInput, LabError
from vsphere_replicator.lab.process import MAX_DISK_SIZE, MAX_DISKS_PER_VM, STAR_ANSWERS, LabInfo

MAX_WRITE = 1 << 30  # bytes one write may carry: the lab's own limit (maxWrite in vcsim/control.go)
WRITE_PIECE = 64 << 20  # write_file and write_random_digest send at most this much per request
MAX_FAULT_COUNT = 1000  # these two mirror maxCount and maxDelayMS in vcsim/faults.go
MAX_DELAY_MS = 10_000
DROP_PATHS = ("sdk", "folder", "any")  # where drop-connection cuts responses (checked in vcsim/faults.go)
TOOLS_STATES = ("running", "notRunning", "notInstalled")  # a guest's VMware Tools (vcsim/vmtasks.go)
QUIESCE_FAULTS = ("FilesystemQuiesceFault", "ApplicationQuiesceFault")  # what `fail_quiesce` injects


def _check_write(vm: object, offset: object, length: int, disk: object) -> None:
    """What the lab would refuse, refused here before a byte is generated, read or sent."""
    check_text(vm, "vm")
    check_int(offset, "offset", 0, MAX_DISK_SIZE, unit="bytes")
    check_int(disk, "disk", 0, MAX_DISKS_PER_VM - 1)
    if not 1 <= length <= MAX_WRITE:
        raise InvalidInput(f"a lab write carries 1 byte to 1 GiB ({MAX_WRITE} bytes), not {length}")


class _SeededBytes:
    """The bytes of `random.Random(seed).randbytes(total)`, asked for piece by piece.

    Pieces start at multiples of WRITE_PIECE (a multiple of 4: randbytes then
    yields the same stream as one call), so a seed writes the same data
    whatever the piece size; asking for an earlier piece restarts the stream.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._at = 0

    def __call__(self, start: int, length: int) -> bytes:
        if start < self._at:
            self._rng, self._at = random.Random(self._seed), 0
        while self._at < start:  # skip ahead, a piece at a time (memory stays bounded)
            step = min(WRITE_PIECE, start - self._at)
            self._rng.randbytes(step)
            self._at += step
        self._at += length
        return self._rng.randbytes(length)


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
        """Write `data` (1 byte to 1 GiB) into the VM's disk as its guest would (into the current state)."""
        check_type(data, bytes, "data")
        _check_write(vm, offset, len(data), disk)
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
        """Write `length` random bytes (reproducible with `seed`, at most 1 GiB); returns them."""
        check_int(length, "length", 1, MAX_WRITE, unit="bytes")
        check_type(seed, int, "seed", optional=True)
        _check_write(vm, offset, length, disk)
        data = os.urandom(length) if seed is None else random.Random(seed).randbytes(length)
        self.write(vm, data, offset=offset, disk=disk)
        return data

    def write_random_digest(
        self, vm: str, *, offset: int, length: int, seed: int | None = None, disk: int = 0
    ) -> str:
        """`write_random` without holding the bytes: sent in pieces; returns their sha256 (hex)."""
        check_int(length, "length", 1, MAX_WRITE, unit="bytes")
        check_type(seed, int, "seed", optional=True)
        _check_write(vm, offset, length, disk)
        pieces = (lambda _, n: os.urandom(n)) if seed is None else _SeededBytes(seed)
        return self._write_pieces(vm, offset, length, disk, pieces)

    def write_file(
        self, vm: str, path: str | os.PathLike[str], *, offset: int, disk: int = 0
    ) -> tuple[int, str]:
        """Write a regular file's bytes (at most 1 GiB), in pieces; returns (length, sha256 hex).

        Devices, pipes and directories are refused: /dev/zero has no end.
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise InvalidInput(f"{name} is not a regular file")
                if info.st_size == 0:
                    raise InvalidInput(f"{name} is empty: nothing to write")
                if info.st_size > MAX_WRITE:
                    raise InvalidInput(
                        f"{name} holds {info.st_size} bytes; a lab write carries at most 1 GiB"
                    )
                _check_write(vm, offset, info.st_size, disk)

                def piece(start: int, length: int) -> bytes:
                    handle.seek(start)
                    data = handle.read(length)
                    if len(data) != length:
                        raise InvalidInput(f"{name} changed while it was being written")
                    return data

                return info.st_size, self._write_pieces(vm, offset, info.st_size, disk, piece)
        except OSError as exc:
            raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}") from exc

    def _write_pieces(
        self, vm: str, offset: int, length: int, disk: int, piece: Callable[[int, int], bytes]
    ) -> str:
        """Write `length` bytes, `piece(start, n)` at a time; the sha256 of all of them, in order.

        The last piece goes first: the lab checks the VM, the disk and that the
        write fits on each request, so a write that would not fit is refused
        before any of its bytes land.
        """
        starts = range(0, length, WRITE_PIECE)
        last = starts[-1]
        tail = piece(last, length - last)
        try:
            self.write(vm, tail, offset=offset + last, disk=disk)
        except LabError as exc:
            if not last:
                raise
            reason = str(exc).removeprefix("lab write: ")
            raise LabError(f"lab write of {length} bytes at offset {offset} refused: {reason}") from exc
        digest = hashlib.sha256()
        for start in starts[:-1]:
            data = piece(start, WRITE_PIECE)
            self.write(vm, data, offset=offset + start, disk=disk)
            digest.update(data)
        digest.update(tail)
        return digest.hexdigest()

    def cbt_reset(self, vm: str, disk: int | None = None) -> dict[str, Any]:
        """Regenerate the disks' tracking identity, as a CBT reset or host crash does."""
        check_text(vm, "vm")
        if disk is not None:
            check_int(disk, "disk", 0, MAX_DISKS_PER_VM - 1)
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
        check_text(method, "method")
        check_text(fault, "fault")
        check_int(count, "count", 1, MAX_FAULT_COUNT)
        params: dict[str, Any] = {"method": method, "fault": fault, "count": count}
        if message is not None:
            params["message"] = message
        return self.inject_fault("method", **params)

    def expire_sessions(self) -> dict[str, Any]:
        """Expire every session: the next call of each gets NotAuthenticated."""
        return self.inject_fault("expire-sessions")

    def drop_connections(
        self, count: int = 1, path: str = "any", method: str | None = None
    ) -> dict[str, Any]:
        """Cut the next `count` responses (on one of DROP_PATHS: `sdk`, `folder` or `any`) half-way.

        With `method` ("A|B|…"), only responses to those SOAP methods: for a
        task method the task runs while the client sees the connection break.
        """
        check_int(count, "count", 1, MAX_FAULT_COUNT)
        if method is None:
            return self.inject_fault("drop-connection", count=count, path=path)
        return self.inject_fault("drop-connection", count=count, path=path, method=method)

    def slow_reads(self, delay_ms: int, count: int = 1) -> dict[str, Any]:
        """Delay the next `count` datastore reads by `delay_ms`."""
        check_int(delay_ms, "delay_ms", 1, MAX_DELAY_MS)
        check_int(count, "count", 1, MAX_FAULT_COUNT)
        return self.inject_fault("slow-reads", delay_ms=delay_ms, count=count)

    def slow_tasks(self, method: str, delay_ms: int, count: int = 1) -> dict[str, Any]:
        """Make the next `count` tasks of `method` ("A_Task|B_Task" for several) run `delay_ms` longer.

        The task holds its VM meanwhile, so a second task on that VM fails with TaskInProgress.
        """
        check_text(method, "method")
        if not all(name.endswith("_Task") for name in method.split("|")):
            raise InvalidInput(f"slow_tasks takes task methods (ending in _Task), not {method!r}")
        check_int(delay_ms, "delay_ms", 1, MAX_DELAY_MS)
        check_int(count, "count", 1, MAX_FAULT_COUNT)
        return self.inject_fault("slow-task", method=method, delay_ms=delay_ms, count=count)

    def fail_quiesce(self, fault: str, count: int = 1, message: str | None = None) -> dict[str, Any]:
        """Make the next `count` quiesced snapshots (of a VM whose Tools run) fail with `fault`.

        `fault` is one of QUIESCE_FAULTS; as on vSphere, the failed snapshot leaves nothing behind.
        """
        if fault not in QUIESCE_FAULTS:
            raise InvalidInput(f"a quiesce fault is one of {', '.join(QUIESCE_FAULTS)}, not {fault!r}")
        check_int(count, "count", 1, MAX_FAULT_COUNT)
        params: dict[str, Any] = {"fault": fault, "count": count}
        if message is not None:
            params["message"] = message
        return self.inject_fault("quiesce", **params)

    def set_tools(self, vm: str, state: str) -> dict[str, Any]:
        """Set the VM's VMware Tools state (one of TOOLS_STATES); lab VMs start with Tools running.

        Tools run only while the VM is powered on; a quiesced snapshot needs them
        (ToolsUnavailable otherwise). `guest.toolsRunningStatus` and `guest.toolsStatus` follow.
        """
        check_text(vm, "vm")
        if state not in TOOLS_STATES:
            raise InvalidInput(f"tools state must be one of {', '.join(TOOLS_STATES)}, not {state!r}")
        result: dict[str, Any] = self._call("POST", "tools", params={"vm": vm, "state": state})
        return result

    def set_star_answer(self, datastore: str, answer: str | None = None) -> dict[str, Any]:
        """What QueryChangedDiskAreas(changeId="*") answers for disks on `datastore` from now on.

        One of STAR_ANSWERS: "allocated" (the allocated areas, VMFS), "whole" (one
        extent covering the disk, NFS and vSAN by default), "fault" (FileFault).
        None restores the datastore kind's default. Not a one-shot fault: it stays.
        """
        check_text(datastore, "datastore")
        if answer is not None and answer not in STAR_ANSWERS:
            raise InvalidInput(f"star answer must be one of {', '.join(STAR_ANSWERS)}, not {answer!r}")
        params = {"datastore": datastore, "answer": answer or ""}
        result: dict[str, Any] = self._call("POST", "star-answer", params=params)
        return result

    def datastores(self) -> dict[str, dict[str, str]]:
        """Each datastore's kind, summary.type and changeId="*" answer."""
        result: dict[str, dict[str, str]] = self._call("GET", "datastores")
        return result

    def leave_consolidation_needed(self, count: int = 1) -> dict[str, Any]:
        """Make the next `count` snapshot removals leave `runtime.consolidationNeeded` set."""
        check_int(count, "count", 1, MAX_FAULT_COUNT)
        return self.inject_fault("consolidation-needed", count=count)

    def disk_sessions(self) -> list[dict[str, Any]]:
        """The disk layers a data path (the VDDK stand-in) holds open: ESXi refuses to change them."""
        result: list[dict[str, Any]] = self._call("GET", "disk-sessions")
        return result

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
