"""Independent checks of a replica: plain pyVmomi for vCenter state, file hashes for bytes."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pyVmomi import vim

from tests import labutil

STATE_KEY = "vsphere_replicator.state"
JOURNAL_KEY = "vsphere_replicator.journal"


def by_position(disks: list[Any]) -> list[Any]:
    return sorted(disks, key=lambda d: (d.controllerKey, d.unitNumber, d.key))


def snapshots(vm: Any) -> list[Any]:
    """Every snapshot tree node of a VM, parents first."""
    out: list[Any] = []

    def walk(nodes: list[Any]) -> None:
        for n in nodes:
            out.append(n)
            walk(n.childSnapshotList)

    if vm.snapshot is not None:
        walk(vm.snapshot.rootSnapshotList)
    return out


def option(vm: Any, key: str) -> str | None:
    return next((str(o.value) for o in vm.config.extraConfig if o.key == key), None)


def state(vm: Any) -> dict[str, Any]:
    text = option(vm, STATE_KEY)
    assert text is not None, f"{vm.name} carries no replication state"
    data: dict[str, Any] = json.loads(text)
    return data


def layer_sha(lab: Any, file_name: str) -> str:
    """sha256 of a disk layer's bytes: its flat extent, or through its chain when it is a redo log."""
    flat = labutil.local_extent(lab, file_name)
    return labutil.sha256(flat) if flat.exists() else chain_sha(lab, file_name)


def source_hashes(lab: Any, vm: Any) -> list[str]:
    """sha256 of each disk's current bytes, in disk order."""
    return [layer_sha(lab, d.backing.fileName) for d in by_position(labutil.disks(vm))]


def point_files(lab: Any, replica: Any, point_id: str) -> list[Path]:
    node = next(n for n in snapshots(replica) if n.name == "vr-" + point_id)
    return [labutil.local_extent(lab, d.backing.fileName) for d in by_position(labutil.disks(node.snapshot))]


def point_hashes(lab: Any, replica: Any, point_id: str) -> list[str]:
    node = next(n for n in snapshots(replica) if n.name == "vr-" + point_id)
    return [layer_sha(lab, d.backing.fileName) for d in by_position(labutil.disks(node.snapshot))]


def assert_replica_matches(lab: Any, source: Any, replica: Any, point_id: str) -> None:
    """The restore point holds the source's current bytes (checksums and qemu-img compare).

    Flat layers are compared file to file; redo logs (the default lab's) through their chains.
    """
    ours = [labutil.local_extent(lab, d.backing.fileName) for d in by_position(labutil.disks(source))]
    theirs = point_files(lab, replica, point_id)
    assert len(ours) == len(theirs)
    if not all(p.exists() for p in [*ours, *theirs]):
        assert_point_matches_chains(lab, source, replica, point_id)
        return
    for a, b in zip(ours, theirs, strict=True):
        assert labutil.sha256(a) == labutil.sha256(b), f"{b} differs from {a}"
        assert labutil.qemu_img_compare_raw(a, b) == 0


def our_source_snapshots(vm: Any) -> list[str]:
    return [n.name for n in snapshots(vm) if n.description.startswith("vsphere_replicator:snapshot:v1")]


def all_vms(si: Any) -> list[Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return list(view.view)
    finally:
        view.DestroyView()


def find(si: Any, name: str) -> Any:
    hits = [v for v in all_vms(si) if v.name == name]
    assert len(hits) == 1, f"{len(hits)} VMs named {name}"
    return hits[0]


def chain_sha(lab: Any, file_name: str) -> str:
    """sha256 of a disk layer's bytes as its whole backing chain resolves them, read by qemu-img."""
    with tempfile.TemporaryDirectory(prefix="vr-chain-") as tmp:
        return labutil.sha256(labutil.chain_image(lab, file_name, Path(tmp) / "disk.raw"))


def chain_hashes(lab: Any, vm: Any) -> list[str]:
    """chain_sha of each of a VM's (or a snapshot's) disks, in disk order."""
    return [chain_sha(lab, d.backing.fileName) for d in by_position(labutil.disks(vm))]


def point_chain_hashes(lab: Any, replica: Any, point_id: str) -> list[str]:
    node = next(n for n in snapshots(replica) if n.name == "vr-" + point_id)
    return chain_hashes(lab, node.snapshot)


def assert_point_matches_chains(lab: Any, source: Any, replica: Any, point_id: str) -> None:
    """The restore point holds the source's current bytes, both read through their chains by qemu-img."""
    node = next(n for n in snapshots(replica) if n.name == "vr-" + point_id)
    ours, theirs = by_position(labutil.disks(source)), by_position(labutil.disks(node.snapshot))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        left = labutil.local_descriptor(lab, a.backing.fileName)
        right = labutil.local_descriptor(lab, b.backing.fileName)
        compare = ["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "vmdk", str(left), str(right)]
        assert subprocess.run(compare, check=False, timeout=120).returncode == 0, (
            f"{right} differs from {left}"
        )
