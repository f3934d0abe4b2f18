"""Plain pyVmomi and HTTP helpers for testing the lab.

These deliberately avoid vsphere_replicator's library code: the lab is
checked the way any pyVmomi script would see a vCenter.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

CHANGE_ID_PATTERN = r"^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/\d+$"


def connect(info: Any) -> Any:
    context = ssl.create_default_context(cafile=info.ca_file)
    return SmartConnect(host=info.host, port=info.port, user=info.user, pwd=info.password, sslContext=context)


def disconnect(si: Any) -> None:
    Disconnect(si)


def find_vm(si: Any, name: str) -> Any:
    vm = si.content.searchIndex.FindByInventoryPath(f"DC0/vm/{name}")
    assert vm is not None, f"no VM {name}"
    return vm


def disks(obj: Any) -> list[Any]:
    """Virtual disks of a VM or of a snapshot's frozen config."""
    return [d for d in obj.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


def snapshot(vm: Any, name: str, *, memory: bool = False, quiesce: bool = False) -> Any:
    task = vm.CreateSnapshot_Task(name=name, description="test", memory=memory, quiesce=quiesce)
    WaitForTask(task)
    return task.info.result


def wait(task: Any) -> Any:
    WaitForTask(task)
    return task.info.result


def changed_areas(
    vm: Any, snap: Any, key: int, change_id: str, capacity: int
) -> tuple[list[tuple[int, int]], int]:
    """Loop QueryChangedDiskAreas over the whole disk, as every caller must.

    Each answer's areas must lie inside the window it covers; areas that
    touch across a window edge are merged.
    """
    offset, calls = 0, 0
    areas: list[tuple[int, int]] = []
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=offset, changeId=change_id)
        calls += 1
        assert info.startOffset == offset
        assert info.length > 0
        for a in info.changedArea:
            assert info.startOffset <= a.start and a.start + a.length <= info.startOffset + info.length
            if areas and areas[-1][0] + areas[-1][1] == a.start:  # split at a window edge
                areas[-1] = (areas[-1][0], areas[-1][1] + a.length)
            else:
                areas.append((a.start, a.length))
        offset = info.startOffset + info.length
    return areas, calls


def tracked(change_ids: Mapping[int, str | None]) -> dict[int, str]:
    """`change_ids_at`'s answer for a snapshot taken with CBT on: every disk has a change id."""
    untracked = [key for key, change_id in change_ids.items() if change_id is None]
    assert not untracked, f"CBT is not tracking disks {untracked}"
    return {key: change_id for key, change_id in change_ids.items() if change_id is not None}


def soap_message(fault: BaseException) -> str:
    """The fault string pyVmomi puts on a SOAP fault as `msg` (its type stubs do not declare it)."""
    message = getattr(fault, "msg", None)
    assert isinstance(message, str), f"{fault!r} carries no message"
    return message


def datastore_path(file_name: str) -> tuple[str, str]:
    """'[ds] dir/x.vmdk' -> ('ds', 'dir/x.vmdk')."""
    ds, _, rel = file_name.partition("] ")
    return ds.lstrip("["), rel


def local_extent(info: Any, file_name: str) -> Path:
    ds, rel = datastore_path(file_name)
    return Path(info.datastores[ds]) / rel.replace(".vmdk", "-flat.vmdk")


def local_descriptor(info: Any, file_name: str) -> Path:
    ds, rel = datastore_path(file_name)
    return Path(info.datastores[ds]) / rel


_images = tempfile.TemporaryDirectory(prefix="vr-layers-")


def chain_image(info: Any, file_name: str, image: Path) -> Path:
    """`image`, a raw copy of a disk layer's bytes through its whole chain as qemu-img reads them.

    qemu-img follows parentFileNameHint down to the base disk: a redo log
    (vmfsSparse) and a flat layer alike, read by code that is not the lab's.
    """
    descriptor = local_descriptor(info, file_name)
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(descriptor), str(image)],
        check=True,
        timeout=120,
    )
    return image


def layer_image(info: Any, file_name: str) -> Path:
    """A raw image of a disk layer's bytes: its flat extent, or its chain resolved by qemu-img.

    A snapshot's layer on the ESXi-like lab is a redo log whose bytes live in
    its whole chain. A fresh copy each call, since the chain of a running
    VM's layer keeps changing.
    """
    flat = local_extent(info, file_name)
    if flat.exists():
        return flat
    return chain_image(info, file_name, Path(tempfile.mkdtemp(dir=_images.name)) / "layer.raw")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_session(info: Any, si: Any) -> requests.Session:
    """An HTTP session for /folder that reuses the SOAP session cookie."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the lab's CA
    session.verify = info.ca_file
    session.headers["Cookie"] = si._stub.cookie
    return session


def folder_url(info: Any, file_name: str) -> tuple[str, dict[str, str]]:
    ds, rel = datastore_path(file_name)
    rel = rel.replace(".vmdk", "-flat.vmdk")
    return (
        f"https://{info.host}:{info.port}/folder/{rel}",
        {"dcPath": info.datacenter, "dsName": ds},
    )


def read_range(session: requests.Session, info: Any, file_name: str, offset: int, length: int) -> bytes:
    url, params = folder_url(info, file_name)
    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
    response = session.get(url, params=params, headers=headers, timeout=30)
    assert response.status_code == 206, response.status_code
    return response.content


def qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True, text=True
    )
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def qemu_img_compare(a: Path, b: Path) -> int:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode


def apply_writes(image: bytearray, writes: Iterator[tuple[int, bytes]]) -> None:
    for offset, data in writes:
        image[offset : offset + len(data)] = data


def block_round(writes: list[tuple[int, int]], block: int, capacity: int) -> list[tuple[int, int]]:
    """Block-aligned union of (offset, length) writes, as CBT reports them."""
    blocks = sorted({b for off, n in writes for b in range(off // block, (off + n - 1) // block + 1)})
    out: list[tuple[int, int]] = []
    for b in blocks:
        start = b * block
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + block)
        else:
            out.append((start, block))
    return [(s, min(n, capacity - s)) for s, n in out]


def qemu_img_compare_raw(a: Path, b: Path) -> int:
    return subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", str(a), str(b)], check=False
    ).returncode
