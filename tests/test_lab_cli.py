"""The lab from the command line, the way a user drives it; and at scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests import labutil
from vsphere_replicator.demo import run_demo
from vsphere_replicator.lab import LabInfo

# Every test here starts a lab of its own (through the CLI, the demo or a script).
pytestmark = pytest.mark.lab


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsphere_replicator.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_lab_up_write_status_env_down(tmp_path: Path) -> None:
    state = str(tmp_path / "lab")
    up = cli("lab", "up", "--vms", "2", "--disk-size", "8M", "--state-dir", state)
    assert up.returncode == 0, up.stderr
    info = LabInfo.from_json(up.stdout.strip())
    try:
        assert set(json.loads(up.stdout)) >= {
            "url",
            "host",
            "port",
            "user",
            "password",
            "ca_file",
            "datacenter",
            "datastores",
        }
        again = cli("lab", "up", "--state-dir", state)
        assert again.returncode == 1 and "already running" in again.stderr
        wrote = cli(
            "lab",
            "write",
            "lab-vm-0002",
            "--offset",
            "1M",
            "--random",
            "4K",
            "--seed",
            "3",
            "--state-dir",
            state,
        )
        assert wrote.returncode == 0, wrote.stderr
        written = json.loads(wrote.stdout)
        assert written["length"] == 4096
        extent = Path(info.datastores["primary-ds"]) / "lab-vm-0002" / "lab-vm-0002-flat.vmdk"
        with extent.open("rb") as f:
            f.seek(1 << 20)
            import hashlib

            assert hashlib.sha256(f.read(4096)).hexdigest() == written["sha256"]
        payload = tmp_path / "payload.bin"
        payload.write_bytes(b"from a file" * 100)
        from_file = cli(
            "lab",
            "write",
            "lab-vm-0001",
            "--disk",
            "0",
            "--offset",
            "512",
            "--file",
            str(payload),
            "--state-dir",
            state,
        )
        assert from_file.returncode == 0, from_file.stderr
        first = Path(info.datastores["primary-ds"]) / "lab-vm-0001" / "lab-vm-0001-flat.vmdk"
        assert first.read_bytes()[512 : 512 + 1100] == payload.read_bytes()
        assert LabInfo.from_json(cli("lab", "status", "--state-dir", state).stdout) == info
        env = cli("lab", "env", "--state-dir", state).stdout
        assert f"export VSPHERE_PORT={info.port}" in env and "VSPHERE_CA_FILE=" in env
        fault = cli(
            "lab", "fault", "method", "CreateSnapshot_Task", "FileFault", "--count", "2", "--state-dir", state
        )
        assert json.loads(fault.stdout)["remaining"] == 2
        assert len(json.loads(cli("lab", "fault", "list", "--state-dir", state).stdout)) == 1
        before_kind = cli("lab", "fault", "--state-dir", state, "list")  # before the kind as well
        assert before_kind.returncode == 0 and len(json.loads(before_kind.stdout)) == 1, before_kind.stderr
        slow = cli("lab", "fault", "slow-task", "ReconfigVM_Task", "--delay-ms", "50", "--state-dir", state)
        assert json.loads(slow.stdout)["kind"] == "slow-task", slow.stderr
        quiesce = cli("lab", "fault", "quiesce", "FilesystemQuiesceFault", "--state-dir", state)
        assert json.loads(quiesce.stdout)["fault"] == "FilesystemQuiesceFault", quiesce.stderr
        assert len(json.loads(cli("lab", "fault", "list", "--state-dir", state).stdout)) == 3
        tools = cli("lab", "tools", "lab-vm-0001", "--state", "notRunning", "--state-dir", state)
        assert json.loads(tools.stdout)["tools_running_status"] == "guestToolsNotRunning", tools.stderr
        si = labutil.connect(info)
        try:
            assert labutil.find_vm(si, "lab-vm-0001").guest.toolsStatus == "toolsNotRunning"
        finally:
            labutil.disconnect(si)
        assert cli("lab", "tools", "lab-vm-0001", "--state", "asleep", "--state-dir", state).returncode == 2
        cli("lab", "fault", "clear", "--state-dir", state)
        assert json.loads(cli("lab", "fault", "list", "--state-dir", state).stdout) == []
    finally:
        down = cli("lab", "down", "--state-dir", state)
    assert down.returncode == 0
    assert cli("lab", "status", "--state-dir", state).returncode == 1


def test_two_thousand_vms_start_and_are_all_listed(tmp_path: Path) -> None:
    from vsphere_replicator.lab import running_lab

    with running_lab(tmp_path / "big", vms=2000, disk_size=1 << 20) as info:
        si = labutil.connect(info)
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        traversal = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
        )
        pc = content.propertyCollector
        result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
        count = len(result.objects)
        while result.token:
            result = pc.ContinueRetrievePropertiesEx(result.token)
            count += len(result.objects)
        labutil.disconnect(si)
    assert count == 2000


def test_demo_protects_replicates_and_test_fails_over(capsys: Any) -> None:
    report = run_demo()
    assert report.all_points_verified and report.test_copy_removed
    assert report.restore_points == ("rp-000002", "rp-000003", "rp-000004")
    assert report.bytes_moved > 0
    out = capsys.readouterr().out
    assert "protected by lab-vm-0001-replica" in out and "test failover: lab-vm-0001-failover-test" in out


def test_a_plain_pyvmomi_script_can_do_everything_against_the_lab(tmp_path: Path) -> None:
    """The issue's bar: a script that never imports vsphere_replicator."""
    script = Path(__file__).parent.parent / "examples" / "pyvmomi_against_the_lab.py"
    assert "vsphere_replicator" not in "".join(
        line for line in script.read_text().splitlines() if line.startswith(("import", "from"))
    )
    scripts = sysconfig.get_path("scripts")  # where `vsphere-replicator` was installed
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "lab")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "3 changed areas" in run.stdout


def test_added_latency_slows_every_soap_call(tmp_path: Path) -> None:
    from vsphere_replicator.lab import running_lab

    with running_lab(tmp_path / "slow", vms=1, disk_size=1 << 20, latency_ms=150) as info:
        si = labutil.connect(info)
        started = time.monotonic()
        si.RetrieveContent()
        elapsed = time.monotonic() - started
        labutil.disconnect(si)
    assert elapsed >= 0.15
