"""The two-site walkthrough of docs/user-guide.md, command by command, through the CLI.

Site A's vCenter holds the VMs, site B's the replicas; the commands find them
through VSPHERE_SOURCE_* and VSPHERE_TARGET_* (what `lab env --as source` and
`lab env --site B --as target` export), and move every byte through the VDDK
transport: nothing is mounted. Two VMs form recovery plan `web` (one
consistency group, two tiers, recovery addresses). After site A's lab is
stopped, status, restore points and the plan's failover run on site B alone;
then a fresh site A comes up and one VM fails back into it.
Results are checked through plain pyVmomi and qemu-img, not the commands'
own output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests import labutil
from tests.replication_util import chain_hashes, find
from tests.test_failover import nic_connections, nic_networks
from vsphere_replicator.lab import LabControl, LabInfo, start_lab, stop_lab, vddk_standin

pytestmark = pytest.mark.lab

MIB = 1 << 20


def role_env(lab: LabInfo, role: str) -> dict[str, str]:
    prefix = f"VSPHERE_{role.upper()}_"
    return {
        prefix + "HOST": lab.host,
        prefix + "PORT": str(lab.port),
        prefix + "USER": lab.user,
        prefix + "PASSWORD": lab.password,
        prefix + "CA_FILE": lab.ca_file,
    }


def vr(env: dict[str, str], *args: str, ok: bool = True) -> Any:
    command = [sys.executable, "-m", "vsphere_replicator.cli", *args, "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_the_two_site_walkthrough(tmp_path: Path) -> None:
    site_a_dir = Path(tempfile.mkdtemp(prefix="vr-site-a-"))
    site_b_dir = Path(tempfile.mkdtemp(prefix="vr-site-b-"))
    fresh_dir = Path(tempfile.mkdtemp(prefix="vr-site-a-fresh-"))  # site A once it is rebuilt
    site_a = start_lab(site_a_dir, vms=2, disks_per_vm=1, disk_size=32 * MIB)
    site_b = start_lab(site_b_dir, site="B", vms=0, disk_size=32 * MIB)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VSPHERE_", "VR_"))}
    env = {
        **base,
        **role_env(site_a, "source"),
        **role_env(site_b, "target"),
        "VSPHERE_REPLICATOR_VDDK_PLUGIN": str(vddk_standin()),
        "VSPHERE_REPLICATOR_VDDK_LIBDIR": str(tmp_path),
    }
    si_b = labutil.connect(site_b)
    try:
        control = LabControl(site_a)
        for vm, tier, address in (("lab-vm-0001", "1", "10.40.0.11"), ("lab-vm-0002", "2", "10.40.0.12")):
            vr(env, "protect", vm, "--datastore", "secondary-ds-b", "--network", "VM Network=DR Network B",
               "--recovery-ip", f"{address}/24,gateway=10.40.0.1", "--recovery-dns", "10.40.0.2",
               "--plan", "web", "--tier", tier, "--consistency-group", "--transport", "vddk")  # fmt: skip
        for vm in ("lab-vm-0001", "lab-vm-0002"):
            control.write_random(vm, offset=4 * MIB, length=500_000, seed=int(vm[-1]))
        made = vr(env, "replicate", "--plan", "web", "--transport", "vddk")
        assert made["failed"] == [] and made["group"] and len(made["cycles"]) == 2
        si_a = labutil.connect(site_a)
        try:
            expected = {vm: chain_hashes(site_a, find(si_a, vm)) for vm in ("lab-vm-0001", "lab-vm-0002")}
        finally:
            labutil.disconnect(si_a)

        status = vr(env, "status")
        assert sorted(s["vm"] for s in status) == ["lab-vm-0001", "lab-vm-0002"]
        assert {s["source_state"] for s in status} == {"poweredOn"}  # read on site A
        test = vr(env, "failover", "--plan", "web", "--test")
        assert [vm["running"] for vm in test["vms"]] == [
            "lab-vm-0001-failover-test",
            "lab-vm-0002-failover-test",
        ]
        for copy in ("lab-vm-0001-failover-test", "lab-vm-0002-failover-test"):
            assert nic_connections(find(si_b, copy)) == [(False, False)]  # isolated
        assert sorted(vr(env, "failover", "--plan", "web", "--cleanup")["removed"]) == [
            "lab-vm-0001-failover-test",
            "lab-vm-0002-failover-test",
        ]

        stop_lab(site_a_dir)  # site A is lost; site B answers alone
        lost = vr(env, "status")  # exit 0: an unknown source is no error
        assert {s["source_state"] for s in lost} == {"unknown"} and {s["state"] for s in lost} == {
            "protected"
        }
        points = vr(env, "restore-points", "lab-vm-0002")
        assert points[-1]["group"] == made["group"]
        result = vr(env, "failover", "--plan", "web", "--unplanned")
        assert result["tiers"] == [["lab-vm-0001"], ["lab-vm-0002"]] and result["group"] == made["group"]
        for vm, address in (("lab-vm-0001", "10.40.0.11"), ("lab-vm-0002", "10.40.0.12")):
            running = find(si_b, f"{vm}-replica")
            assert running.runtime.powerState == "poweredOn" and running.guest.ipAddress == address
            assert nic_networks(running) == ["DR Network B"]
            assert chain_hashes(site_b, running) == expected[vm]

        # Production writes on site B, then site A comes back fresh: a new vCenter with no VM.
        LabControl(site_b).write_random("lab-vm-0001-replica", offset=6 * MIB, length=400_000, seed=21)
        latest = chain_hashes(site_b, find(si_b, "lab-vm-0001-replica"))
        site_a = start_lab(fresh_dir, vms=0, disk_size=32 * MIB)
        env = {**env, **role_env(site_a, "source")}
        refused = vr(env, "failback", "lab-vm-0001", "--transport", "vddk", ok=False)
        assert refused["exit_code"] == 2 and "--datastore" in refused["error"]  # where to make it anew
        assert find(si_b, "lab-vm-0001-replica").runtime.powerState == "poweredOn"  # nothing was touched
        back = vr(env, "failback", "lab-vm-0001", "--datastore", "primary-ds", "--transport", "vddk")
        assert back["running"] == "lab-vm-0001" and back["kind"] == "failback"
        assert [m["kept"] for m in back["macs"]] == [False]  # site B's ESXi generated it: no static MAC
        si_a = labutil.connect(site_a)
        try:
            original = find(si_a, "lab-vm-0001")
            assert original.runtime.powerState == "poweredOn" and nic_networks(original) == ["VM Network"]
            assert chain_hashes(site_a, original) == latest
        finally:
            labutil.disconnect(si_a)
        assert find(si_b, "lab-vm-0001-replica").runtime.powerState == "poweredOff"
        again = {s["vm"]: s for s in vr(env, "status")}
        assert (
            again["lab-vm-0001"]["state"] == "protected"
            and again["lab-vm-0001"]["source_state"] == "poweredOn"
        )
    finally:
        labutil.disconnect(si_b)
        stop_lab(site_a_dir)
        stop_lab(site_b_dir)
        stop_lab(fresh_dir)
