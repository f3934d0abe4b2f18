"""Delta read + apply throughput over each transport, against a same-run sequential baseline.

    python3 benchmarks/delta.py [--disk-size 2G] [--fractions 0.01,0.1,0.5] [--extent 256K]
    python3 benchmarks/delta.py --vddk [--rounds 5] [--disk-size 2G] [--fractions ...] [--extent ...]

For each share of the disk changed (scattered extents), it reads the delta
from the frozen snapshot and writes it into a copy, over the datastore HTTP
endpoint, the mounted datastore path and NBD (qemu-nbd serving the snapshot
extent), and compares with a plain sequential read of as many bytes of the
same file over the same path: one streamed `/folder` GET for HTTP (http.client,
as the library), a `cp`-like read of the file's allocated data for the
mounted path, sequential NBD reads. Each measurement runs in a forked child
so its peak RSS is its own.

`--vddk` measures the VDDK path instead: the library's `VDDKDisks` source
(a private `nbdkit` running the lab's VDDK stand-in on the snapshot's disk,
read through the library's NBD client by `copy_areas`, as the cycle does)
into a local file, against `nbdcopy` (libnbd) copying the same extents from
the same kind of export: nbdkit with the same stand-in and arguments, plus
nbdkit's extentlist filter declaring only the changed extents as data, so
`nbdcopy --destination-is-zero` reads exactly those (with `--flush`: the
library's copy ends with an fsync of the target too). Both nbdkit processes
start before the clock; the two copies alternate in order over `--rounds`
rounds and the median ratio is reported. Both targets are checked against
the snapshot's bytes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vsphere_replicator.cbt import change_ids_at, enable_cbt
from vsphere_replicator.connection import connect, tls_context
from vsphere_replicator.delta import DeltaPlan, http_sources, plan_delta, read_delta
from vsphere_replicator.extents import Extent
from vsphere_replicator.inventory import snapshot_disks
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, vddk_standin
from vsphere_replicator.replication import VDDKDisks
from vsphere_replicator.snapshots import create_snapshot, remove_snapshot
from vsphere_replicator.transport import FileBlockSink, FileBlockSource, NBDBlockDevice, NBDEndpoint
from vsphere_replicator.transport.base import copy_areas
from vsphere_replicator.transport.http import flat_extent_path
from vsphere_replicator.transport.vddk import MAX_REQUEST, verified_thumbprint
from vsphere_replicator.units import parse_size

MiB = 1 << 20


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` in a forked child; its result plus the child's own peak RSS."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            result = work()
        except BaseException as exc:  # report, never return into the parent's code
            result = {"error": repr(exc)}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, _, usage = os.wait4(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    if "error" in result:
        raise RuntimeError(result["error"])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def scatter(control: LabControl, vm: str, size: int, fraction: float, extent: int, seed: int) -> int:
    """Write `fraction` of the disk in non-overlapping extents at random aligned places."""
    rng = random.Random(seed)
    slots = rng.sample(range(size // extent), max(1, int(size * fraction) // extent))
    for slot in slots:
        control.write(vm, rng.randbytes(extent), offset=slot * extent)
    return len(slots) * extent


def apply_delta(plan: DeltaPlan, sources: Any, target: Path) -> dict[str, Any]:
    sink = FileBlockSink(target)
    started = time.perf_counter()
    moved = 0
    for _, offset, data in read_delta(plan, sources):
        sink.write(offset, data)
        moved += len(data)
    sink.flush()
    sink.close()
    return {"seconds": time.perf_counter() - started, "bytes": moved}


def sequential(read: Callable[[int, int], int], total: int) -> dict[str, Any]:
    started = time.perf_counter()
    done = 0
    while done < total:
        done += read(done, min(4 * MiB, total - done))
    return {"seconds": time.perf_counter() - started, "bytes": done}


def http_baseline(lab: LabInfo, file_name: str, total: int) -> dict[str, Any]:
    """One streamed `/folder` GET of `total` bytes, on the HTTP stack the library uses (http.client)."""
    with connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn:
        connection = http.client.HTTPSConnection(lab.host, lab.port, context=tls_context(conn.settings))
        datastore, path = flat_extent_path(file_name)
        started = time.perf_counter()
        connection.request(
            "GET",
            f"/folder/{path}?dcPath={lab.datacenter}&dsName={datastore}",
            headers={"Range": f"bytes=0-{total - 1}", "Cookie": conn.session_cookie},
        )
        response = connection.getresponse()
        done = 0
        while chunk := response.read(4 * MiB):
            done += len(chunk)
        connection.close()
        return {"seconds": time.perf_counter() - started, "bytes": done}


Measure = Callable[[], dict[str, Any]]


def transports(
    lab: LabInfo,
    info: Any,
    plan: DeltaPlan,
    frozen: Path,
    frozen_name: str,
    endpoint: NBDEndpoint,
    target: Path,
) -> dict[str, tuple[Measure, Measure]]:
    """Per transport: (library delta read + apply, sequential baseline of as many bytes)."""

    def http_library() -> dict[str, Any]:
        conn = connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file)
        return apply_delta(plan, http_sources(conn, info), target)

    def nbd_baseline() -> dict[str, Any]:
        device = NBDBlockDevice(endpoint, connections=1)
        return sequential(lambda o, n: len(device.read(o, n)), plan.total)

    def mounted_baseline() -> dict[str, Any]:
        # cp reading as many allocated bytes in file order: holes would come back without any I/O.
        fd = os.open(frozen, os.O_RDONLY)
        started, done, offset = time.perf_counter(), 0, 0
        try:
            while done < plan.total:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
                end = os.lseek(fd, offset, os.SEEK_HOLE)
                while offset < end and done < plan.total:
                    n = len(os.pread(fd, min(4 * MiB, end - offset, plan.total - done), offset))
                    offset, done = offset + n, done + n
        finally:
            os.close(fd)
        return {"seconds": time.perf_counter() - started, "bytes": done}

    return {
        "http": (http_library, lambda: http_baseline(lab, frozen_name, plan.total)),
        "mounted": (lambda: apply_delta(plan, lambda d: FileBlockSource(frozen), target), mounted_baseline),
        "nbd": (lambda: apply_delta(plan, lambda d: NBDBlockDevice(endpoint), target), nbd_baseline),
    }


def standin_nbdkit(
    lab: LabInfo, thumbprint: str, vm: str, snapshot: str, file: str, scratch: Path, listing: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """nbdkit with the stand-in as `VDDKBlockDevice` runs it, plus the extentlist filter; serving."""
    password = scratch / "password"
    if not password.exists():
        fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(lab.password)
    sock = scratch / "baseline.sock"
    sock.unlink(missing_ok=True)
    argv = [
        "nbdkit",
        "--foreground",
        "--exit-with-parent",
        "--unix",
        str(sock),
        "--readonly",
        "--filter=extentlist",
        "--filter=blocksize",
        "python",
        str(vddk_standin()),
        f"extentlist={listing}",
        f"maxdata={MAX_REQUEST}",
        f"server={lab.host}",
        f"port={lab.port}",
        f"user={lab.user}",
        f"password=+{password}",
        f"thumbprint={thumbprint}",
        f"vm=moref={vm}",
        f"snapshot={snapshot}",
        f"file={file}",
        f"libdir={scratch}",
        "transports=nbdssl:nbd",
    ]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    for _ in range(1200):  # at most ~60 s
        if server.poll() is not None:
            raise RuntimeError(f"nbdkit for the nbdcopy baseline exited with status {server.returncode}")
        if sock.exists():
            return server, sock
        time.sleep(0.05)
    server.kill()
    raise RuntimeError("nbdkit for the nbdcopy baseline did not serve within 60 s")


def fresh(target: Path, size: int) -> None:
    """A sparse file of zeros of `size` bytes (what both copies write into)."""
    target.unlink(missing_ok=True)
    with target.open("wb") as f:
        f.truncate(size)


def same_bytes(areas: tuple[Extent, ...], *files: Path) -> bool:
    handles = [open(f, "rb") for f in files]  # noqa: SIM115 - closed below
    try:
        for area in areas:
            done = 0
            while done < area.length:
                n = min(4 * MiB, area.length - done)
                seen = {os.pread(h.fileno(), n, area.start + done) for h in handles}
                if len(seen) != 1:
                    return False
                done += n
        return True
    finally:
        for h in handles:
            h.close()


def chain_image(lab: LabInfo, file_name: str, image: Path) -> Path:
    """The layer's bytes through its whole chain (a redo log's parents too), as qemu-img reads them.

    Reading the chain also leaves its files in the page cache: both copies then read them warm.
    """
    ds, rel = flat_extent_path(file_name)
    descriptor = Path(lab.datastores[ds]) / rel.replace("-flat.vmdk", ".vmdk")
    image.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(descriptor), str(image)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return image


def vddk_main(size: int, extent: int, fractions: list[float], rounds: int) -> int:
    """The VDDK path (library) against nbdcopy over the same stand-in export, `rounds` alternating rounds."""
    rows = []
    all_same = True
    with (
        tempfile.TemporaryDirectory(prefix="vr-bench-") as scratch_dir,
        # The lab's default, as ESXi: each snapshot after the first is a redo log, read through its chain.
        running_lab(vms=1, disk_size=size, cbt_window=64 * MiB) as lab,
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn,
    ):
        scratch = Path(scratch_dir)
        control = LabControl(lab)
        info = enable_cbt(conn, "lab-vm-0001")
        access = VDDKDisks(conn, plugin=str(vddk_standin()), libdir=scratch_dir)
        thumbprint = verified_thumbprint(conn.settings)
        previous = create_snapshot(conn, info, "bench-base").snapshot
        for i, fraction in enumerate(fractions):
            changed = scatter(control, info.name, size, fraction, extent, seed=i)
            current = create_snapshot(conn, info, f"bench-{i}").snapshot
            plan = plan_delta(conn, info, current, change_ids_at(conn, previous))
            areas = plan.changes[0].areas
            disk = snapshot_disks(conn, current.moref)[0]
            frozen = chain_image(lab, disk.file_name, scratch / "frozen.raw")  # and the chain is now cached
            listing = scratch / "extents"
            listing.write_text("".join(f"{a.start} {a.length}\n" for a in areas))
            mine, theirs = scratch / "library.img", scratch / "nbdcopy.img"
            times: dict[str, list[float]] = {"library": [], "nbdcopy": []}
            moved = 0
            for r in range(rounds):
                for who in ("library", "nbdcopy") if r % 2 == 0 else ("nbdcopy", "library"):
                    if who == "library":
                        fresh(mine, size)
                        source = access.source(disk, vm=info.moref, snapshot=current.moref)
                        sink = FileBlockSink(mine)
                        try:
                            started = time.perf_counter()
                            moved = copy_areas(source, sink, areas)
                            times[who].append(time.perf_counter() - started)
                        finally:
                            sink.close()
                            source.close()
                    else:
                        fresh(theirs, size)
                        server, sock = standin_nbdkit(
                            lab, thumbprint, info.moref, current.moref, disk.file_name, scratch, listing
                        )
                        try:
                            started = time.perf_counter()
                            subprocess.run(
                                [
                                    "nbdcopy",
                                    "--destination-is-zero",
                                    "--flush",  # the library's copy ends with an fsync too
                                    f"nbd+unix:///?socket={sock}",
                                    str(theirs),
                                ],
                                check=True,
                                timeout=600,
                            )
                            times[who].append(time.perf_counter() - started)
                        finally:
                            server.terminate()
                            server.wait(timeout=30)
            same = same_bytes(areas, frozen, mine, theirs)
            all_same &= same
            ratios = [b / a for a, b in zip(times["library"], times["nbdcopy"], strict=True)]
            rows.append(
                {
                    "changed %": fraction * 100,
                    "library MB/s": changed / statistics.median(times["library"]) / 1e6,
                    "nbdcopy MB/s": changed / statistics.median(times["nbdcopy"]) / 1e6,
                    "ratio": statistics.median(ratios),
                    "moved/changed": moved / changed,
                    "same bytes": "yes" if same else "NO",
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
            remove_snapshot(conn, info, previous)
            previous = current
    header = ["changed %", "library MB/s", "nbdcopy MB/s", "ratio", "moved/changed", "same bytes"]
    print(
        f"vddk: disk {size // MiB} MiB, extents of {extent // 1024} KiB, {rounds} rounds "
        "(order alternating), median ratio of library/nbdcopy throughput"
    )
    print(" | ".join(f"{h:>13}" for h in header))
    for row in rows:
        print(
            " | ".join(f"{row[h]:>13.2f}" if isinstance(row[h], float) else f"{row[h]:>13}" for h in header)
        )
    ok = all(r["ratio"] >= 0.8 and r["moved/changed"] <= 1.02 for r in rows)
    print(f"goals (ratio >= 0.8, moved/changed <= 1.02): {'met' if ok else 'NOT all met'}")
    print(f"copies: {'identical to the snapshot' if all_same else 'DIFFER from the snapshot'}")
    return 0 if all_same else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--disk-size", default="2G")
    parser.add_argument("--fractions", default="0.01,0.1,0.5")
    parser.add_argument("--extent", default="256K")
    parser.add_argument("--vddk", action="store_true", help="the VDDK path against nbdcopy")
    parser.add_argument("--rounds", type=int, default=5, help="with --vddk: alternating rounds")
    args = parser.parse_args()
    size, extent = parse_size(args.disk_size), parse_size(args.extent)
    fractions = [float(f) for f in args.fractions.split(",")]
    if args.vddk:
        return vddk_main(size, extent, fractions, max(1, args.rounds))
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="vr-bench-") as scratch,
        # Flat layers (not the lab's default redo logs): /folder and a mount read a layer's flat extent
        # and a redo log has none; these transports serve base disks only (docs/transports.md).
        running_lab(vms=1, disk_size=size, cbt_window=64 * MiB, redo_logs=False) as lab,
        connect(lab.host, lab.user, lab.password, port=lab.port, ca_file=lab.ca_file) as conn,
    ):
        control = LabControl(lab)
        info = enable_cbt(conn, "lab-vm-0001")
        previous = create_snapshot(conn, info, "bench-base").snapshot
        for i, fraction in enumerate(fractions):
            changed = scatter(control, info.name, size, fraction, extent, seed=i)
            current = create_snapshot(conn, info, f"bench-{i}").snapshot
            plan = plan_delta(conn, info, current, change_ids_at(conn, previous))
            frozen_name = snapshot_disks(conn, current.moref)[0].file_name
            ds, rel = flat_extent_path(frozen_name)
            frozen = Path(lab.datastores[ds]) / rel
            target = Path(scratch) / "copy.img"
            FileBlockSink(target, size=size).close()
            sock = Path(scratch) / f"nbd-{i}.sock"
            nbd = subprocess.Popen(
                ["qemu-nbd", "-f", "raw", "-r", "-t", "-e", "8", "-k", str(sock), str(frozen)]
            )
            while not sock.exists():
                time.sleep(0.05)
            endpoint = NBDEndpoint(socket_path=str(sock))
            try:
                measured = transports(lab, info, plan, frozen, frozen_name, endpoint, target)
                for name, (library, baseline) in measured.items():
                    os.posix_fadvise(os.open(frozen, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
                    base = in_child(baseline)
                    lib = in_child(library)
                    rows.append(
                        {
                            "changed %": fraction * 100,
                            "transport": name,
                            "library MB/s": lib["bytes"] / lib["seconds"] / 1e6,
                            "baseline MB/s": base["bytes"] / base["seconds"] / 1e6,
                            "ratio": (lib["bytes"] / lib["seconds"]) / (base["bytes"] / base["seconds"]),
                            "moved/changed": lib["bytes"] / changed,
                            "peak RSS MiB": lib["peak_rss_mib"],
                        }
                    )
                    print(json.dumps(rows[-1]), file=sys.stderr)
            finally:
                nbd.terminate()
                nbd.wait()
            remove_snapshot(conn, info, previous)
            previous = current
    header = [
        "changed %",
        "transport",
        "library MB/s",
        "baseline MB/s",
        "ratio",
        "moved/changed",
        "peak RSS MiB",
    ]
    print(f"disk {size // MiB} MiB, extents of {extent // 1024} KiB, 4 workers, 4 MiB chunks")
    print(" | ".join(f"{h:>13}" for h in header))
    for row in rows:
        print(
            " | ".join(f"{row[h]:>13.2f}" if isinstance(row[h], float) else f"{row[h]:>13}" for h in header)
        )
    ok = all(r["ratio"] >= 0.8 and r["moved/changed"] <= 1.05 and r["peak RSS MiB"] < 200 for r in rows)
    print(
        f"goals (ratio >= 0.8, moved/changed <= 1.05, peak RSS < 200 MiB): {'met' if ok else 'NOT all met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
