"""The lab's inventory and TLS, seen through plain pyVmomi."""

from __future__ import annotations

import re
import socket
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import SmartConnect
from pyVmomi import vim, vmodl

from tests import labutil
from tests.conftest import DISK_SIZE, LAB_VMS


def test_lab_info_names_everything_a_client_needs(lab: Any) -> None:
    assert lab.url == f"https://127.0.0.1:{lab.port}/sdk"
    assert lab.host == "127.0.0.1"
    assert set(lab.datastores) == {"primary-ds", "secondary-ds"}
    assert lab.datacenter == "DC0"


def test_tls_verifies_against_the_lab_ca_only(lab: Any) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(
            host=lab.host,
            port=lab.port,
            user=lab.user,
            pwd=lab.password,
            sslContext=ssl.create_default_context(cafile=None, capath="/nonexistent"),
        )
    context = ssl.create_default_context(cafile=lab.ca_file)
    with (
        socket.create_connection((lab.host, lab.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    text = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-text"], input=der, capture_output=True, check=True
    ).stdout.decode()
    assert "Public-Key: (2048 bit)" in text or "Public-Key: (4096 bit)" in text


def test_listens_on_loopback_only(lab: Any) -> None:
    port = f"{lab.port:04X}"
    listeners = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(":" + port) and line.split()[3] == "0A"
    ]
    assert listeners == ["0100007F:" + port]


def test_the_lab_log_is_private_and_holds_no_password_or_session(lab: Any, conn: Any, si: Any) -> None:
    """lab.log gets the lab's stdout and stderr: its owner's only, and never a credential."""
    state = Path(lab.state_dir)
    log = state / "lab.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0
    cookie = re.search(r'vmware_soap_session="?([^";\s]+)', conn.session_cookie)
    assert cookie is not None
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):  # vcsim logs this one, inside a live session
        vim.VirtualMachine("vm-no-such", si._stub).PowerOnVM_Task()
    text = log.read_text(errors="replace")
    assert "inventory of" in text and "vm-no-such" in text  # the lab's own log, written after login
    for secret in (lab.password, cookie[1], si.content.sessionManager.currentSession.key):
        assert secret not in text


def test_bad_password_is_refused(lab: Any) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(
            host=lab.host,
            port=lab.port,
            user=lab.user,
            pwd="wrong",
            sslContext=ssl.create_default_context(cafile=lab.ca_file),
        )


def test_inventory_has_a_cluster_two_datastores_and_the_vms(si: Any) -> None:
    content = si.RetrieveContent()
    dc = content.rootFolder.childEntity[0]
    clusters = [c for c in dc.hostFolder.childEntity if isinstance(c, vim.ClusterComputeResource)]
    assert len(clusters) == 1 and len(clusters[0].host) >= 2
    assert {ds.name for ds in dc.datastore} >= {"primary-ds", "secondary-ds"}
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    names = {vm.name for vm in view.view if re.fullmatch(r"lab-vm-\d{4}", vm.name)}
    assert len(names) == LAB_VMS
    vm = labutil.find_vm(si, "lab-vm-0001")
    assert [d.capacityInBytes for d in labutil.disks(vm)] == [DISK_SIZE, DISK_SIZE]


def vm_names_spec(si: Any) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    traversal = vmodl.query.PropertyCollector.TraversalSpec(
        name="view", path="view", skip=False, type=vim.view.ContainerView
    )
    return vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
    )


def test_retrieve_properties_ex_pages_like_vcenter(si: Any) -> None:
    pc = si.content.propertyCollector
    result = pc.RetrievePropertiesEx(
        [vm_names_spec(si)], vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=7)
    )
    pages, names = 1, [o.propSet[0].val for o in result.objects]
    assert len(result.objects) == 7 and result.token
    while result.token:
        result = pc.ContinueRetrievePropertiesEx(result.token)
        pages += 1
        names += [o.propSet[0].val for o in result.objects]
    assert len(names) == len(set(names)) >= LAB_VMS
    assert pages == -(-len(names) // 7)


def test_an_unknown_paging_token_is_invalid(si: Any) -> None:
    with pytest.raises(vmodl.fault.InvalidArgument):
        si.content.propertyCollector.ContinueRetrievePropertiesEx("no-such-token")
