"""`/folder` as vCenter's: dcPath is the datacenter's inventory path, locks of running VMs, sessions.

One lab whose datacenter sits in folder Sites (dcPath "Sites/DC0") and
whose `/folder` refuses a running VM's current layer (`lock_running_disks`).
The library derives dcPath from the datastore's datacenter; plain `requests`
shows what the endpoint answers to everything else.
"""

from __future__ import annotations

import http.client
import random
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pyVmomi import vim

from tests import labutil
from tests.conftest import DISK_SIZE
from tests.replication_util import assert_point_matches_chains, find
from vsphere_replicator.cli import build_parser
from vsphere_replicator.connection import Connection, RetryPolicy, connect
from vsphere_replicator.errors import InvalidInput, NotFound, TransportError
from vsphere_replicator.inventory import datacenter_path, datastore_datacenters, get_vm, named_objects
from vsphere_replicator.lab import LabControl, LabInfo, running_lab, vddk_standin
from vsphere_replicator.lab.process import start_lab
from vsphere_replicator.replication import (
    HTTPDatastores,
    ReplicaTarget,
    VDDKDisks,
    disks,
    protect,
    replicate,
)
from vsphere_replicator.transport import DatastoreHTTPSource, flat_extent_path
from vsphere_replicator.transport.http import read_datastore_file

DC_PATH = "Sites/DC0"


@pytest.fixture(scope="module")
def folder_lab() -> Iterator[LabInfo]:
    with running_lab(
        vms=4, disks_per_vm=2, disk_size=DISK_SIZE, dc_folder="Sites", lock_running_disks=True
    ) as info:
        yield info


@pytest.fixture(scope="module")
def folder_control(folder_lab: LabInfo) -> LabControl:
    return LabControl(folder_lab)


@pytest.fixture(scope="module")
def folder_conn(folder_lab: LabInfo) -> Iterator[Connection]:
    with connect(
        folder_lab.host,
        folder_lab.user,
        folder_lab.password,
        port=folder_lab.port,
        ca_file=folder_lab.ca_file,
        retry=RetryPolicy(sleep=lambda _: None),
    ) as connection:
        yield connection


@pytest.fixture(scope="module")
def _folder_si(folder_lab: LabInfo) -> Iterator[Any]:
    si = labutil.connect(folder_lab)
    yield si
    labutil.disconnect(si)


@pytest.fixture
def folder_si(folder_lab: LabInfo, _folder_si: Any) -> Any:
    """A plain pyVmomi session, logged in again when a test expired the lab's sessions."""
    try:
        _folder_si.content.sessionManager.currentSession  # noqa: B018 - a cheap liveness probe
    except vim.fault.NotAuthenticated:
        _folder_si.content.sessionManager.Login(folder_lab.user, folder_lab.password)
    return _folder_si


@pytest.fixture(scope="module")
def off_vm(_folder_si: Any) -> str:
    """A powered-off VM: its current layer is nobody's lock, so /folder serves it."""
    labutil.wait(find(_folder_si, "lab-vm-0004").PowerOffVM_Task())
    return "lab-vm-0004"


def _get(lab: LabInfo, si: Any, path: str, dc_path: str, ds: str, **kw: Any) -> requests.Response:
    return labutil.folder_session(lab, si).get(
        f"https://{lab.host}:{lab.port}/folder/{path}",
        params={"dcPath": dc_path, "dsName": ds},
        timeout=30,
        **kw,
    )


def test_the_lab_names_its_datacenter_by_inventory_path(folder_lab: LabInfo, folder_conn: Connection) -> None:
    assert folder_lab.datacenter == DC_PATH
    assert datastore_datacenters(folder_conn, "primary-ds") == (DC_PATH,)
    assert datacenter_path(folder_conn, "secondary-ds") == DC_PATH
    with pytest.raises(NotFound, match="no-such-ds"):
        datacenter_path(folder_conn, "no-such-ds")
    vm = get_vm(folder_conn, "lab-vm-0001")
    assert vm.folder.startswith(DC_PATH + "/vm")
    # Disk cleanup's datacenter (FileManager calls) is found by the VM's folder path too.
    assert disks._datacenter(folder_conn, vm)._moId == next(
        o.moref for o in named_objects(folder_conn) if o.kind == "Datacenter"
    )


def test_a_wrong_dcpath_or_dsname_is_404_as_vcenter_answers(
    folder_lab: LabInfo, folder_si: Any, off_vm: str
) -> None:
    vm = find(folder_si, off_vm)
    datastore, flat = flat_extent_path(labutil.disks(vm)[0].backing.fileName)
    descriptor = flat.removesuffix("-flat.vmdk") + ".vmdk"
    good = _get(folder_lab, folder_si, descriptor, DC_PATH, datastore)
    assert good.status_code == 200
    assert (
        good.content
        == labutil.local_descriptor(folder_lab, labutil.disks(vm)[0].backing.fileName).read_bytes()
    )
    for dc_path, ds in [
        ("DC0", datastore),  # the bare name of a datacenter inside a folder (govmomi#285)
        ("sites/dc0", datastore),  # inventory paths are case-sensitive
        ("Sites", datastore),  # a folder is no datacenter
        (DC_PATH, "no-such-ds"),
    ]:
        assert _get(folder_lab, folder_si, descriptor, dc_path, ds).status_code == 404, (dc_path, ds)
    assert _get(folder_lab, folder_si, "lab-vm-0004/none.vmdk", DC_PATH, datastore).status_code == 404
    # The same path percent-encoded by hand (requests would encode "/" as %2F too).
    query = "dcPath=Sites%2FDC0&dsName=" + datastore
    encoded = labutil.folder_session(folder_lab, folder_si).get(
        f"https://{folder_lab.host}:{folder_lab.port}/folder/{descriptor}?{query}", timeout=30
    )
    assert encoded.status_code == 200 and encoded.content == good.content


def test_no_session_gets_401_and_the_library_renews_an_expired_one_once(
    folder_lab: LabInfo, folder_conn: Connection, folder_control: LabControl, off_vm: str
) -> None:
    vm = get_vm(folder_conn, off_vm)
    datastore, flat = flat_extent_path(vm.disks[0].file_name)
    descriptor = flat.removesuffix("-flat.vmdk") + ".vmdk"
    params = urllib.parse.urlencode({"dcPath": DC_PATH, "dsName": datastore})
    context = ssl.create_default_context(cafile=folder_lab.ca_file)
    plain = http.client.HTTPSConnection(folder_lab.host, folder_lab.port, timeout=30, context=context)
    try:
        plain.request("GET", f"/folder/{descriptor}?{params}", headers={"Cookie": 'vmware_soap_session="x"'})
        answer = plain.getresponse()
        answer.read()
    finally:
        plain.close()
    assert answer.status == 401 and answer.getheader("WWW-Authenticate", "").startswith("Basic")
    expected = read_datastore_file(folder_conn, datastore, descriptor)  # dcPath derived: Sites/DC0
    assert expected is not None and b"createType" in expected
    folder_control.expire_sessions()
    folder_control.reset_stats()
    assert read_datastore_file(folder_conn, datastore, descriptor) == expected
    assert folder_control.stats()["methods"].get("Login") == 1
    folder_control.expire_sessions()
    folder_control.reset_stats()
    source = DatastoreHTTPSource(folder_conn, vm.disks[0].file_name, vm.disks[0].capacity)
    try:
        assert (
            source.read(0, 4096)
            == labutil.local_extent(folder_lab, vm.disks[0].file_name).read_bytes()[:4096]
        )
    finally:
        source.close()
    assert folder_control.stats()["methods"].get("Login") == 1


def test_a_running_vms_current_layer_is_refused_with_500(
    folder_lab: LabInfo, folder_si: Any, folder_conn: Connection
) -> None:
    vm = get_vm(folder_conn, "lab-vm-0003")
    assert vm.power_state == "poweredOn"
    disk = vm.disks[0]
    datastore, flat = flat_extent_path(disk.file_name)
    assert (
        _get(folder_lab, folder_si, flat, DC_PATH, datastore, headers={"Range": "bytes=0-511"}).status_code
        == 500
    )
    source = HTTPDatastores(folder_conn).source(disk, vm=vm.moref)
    try:
        with pytest.raises(TransportError, match="answered 500"):
            source.read(0, 512)
    finally:
        source.close()


def test_protect_replicate_verify_over_http_with_the_datacenter_in_a_folder(
    folder_lab: LabInfo, folder_si: Any, folder_conn: Connection, folder_control: LabControl
) -> None:
    """Source reads go over /folder (dcPath derived); the running source stays locked.

    The lab is ESXi-like: the replica's current layer is a redo log once it
    has a restore point, so its writes go through VDDK (no mount can).
    """
    name = "lab-vm-0001"
    rng = random.Random(11)
    access = VDDKDisks(folder_conn, plugin=str(vddk_standin()))
    for _ in range(3):
        folder_control.write_random(name, offset=rng.randrange(DISK_SIZE - 70_000), length=65_536, seed=1)
    seeded = protect(folder_conn, name, ReplicaTarget(datastore="secondary-ds"))
    source, replica = find(folder_si, name), find(folder_si, f"{name}-replica")
    assert source.runtime.powerState == "poweredOn"
    assert_point_matches_chains(folder_lab, source, replica, seeded.restore_point)
    for cycle in range(2):
        for disk in (0, 1):
            folder_control.write_random(
                name, offset=rng.randrange(DISK_SIZE - 300_000), length=300_000, seed=cycle, disk=disk
            )
        folder_control.reset_stats()
        result = replicate(folder_conn, name, replica_access=access)
        assert result.bytes_changed > 0 and folder_control.stats()["folder_requests"] > 0
        assert_point_matches_chains(folder_lab, source, replica, result.restore_point)


def test_lab_up_takes_the_options_and_bad_ones_are_refused_before_a_process_starts(tmp_path: Any) -> None:
    args = build_parser().parse_args(["lab", "up", "--dc-folder", "Sites/West", "--lock-running-disks"])
    assert args.dc_folder == "Sites/West" and args.lock_running_disks is True
    defaults = build_parser().parse_args(["lab", "up"])
    assert defaults.dc_folder is None and defaults.lock_running_disks is True and defaults.redo_logs is True
    lenient = build_parser().parse_args(["lab", "up", "--no-lock-running-disks", "--no-redo-logs"])
    assert lenient.lock_running_disks is False and lenient.redo_logs is False
    for bad in ["", "Sites//West", "a%2Fb", "/".join(["f"] * 9)]:
        with pytest.raises(InvalidInput, match="dc_folder"):
            start_lab(tmp_path, dc_folder=bad)
    with pytest.raises(InvalidInput, match="lock_running_disks"):
        start_lab(tmp_path, lock_running_disks="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "lab.json").exists()
