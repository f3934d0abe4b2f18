"""Which transport a command uses when none is given: VDDK against the lab, as against ESXi.

`lab env` names it (VSPHERE_REPLICATOR_TRANSPORT=vddk, the stand-in as the
plugin); a command pointed at a running lab by hand (VSPHERE_* and the lab's
state directory) finds it by the lab's instance UUID; `--mount` alone, or
the variable, says `mount`; a wrong value is refused naming the variable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.replication_util import find, state
from tests.test_replication_crash import cli_env, lab_mounts
from tests.test_vddk import Sampler
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.lab import LabControl, LabInfo, vddk_standin
from vsphere_replicator.replication.sessions import TRANSPORT_VARIABLE, chosen_transport


def vr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vsphere_replicator.cli", *args, "--json"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_command_pointed_at_the_lab_by_hand_goes_through_vddk(
    lab: LabInfo, si: Any, control: LabControl, vm_name: str
) -> None:
    env = cli_env(lab, VR_LAB_STATE_DIR=lab.state_dir)
    del env["VSPHERE_REPLICATOR_TRANSPORT"], env["VSPHERE_REPLICATOR_VDDK_PLUGIN"]  # the default's to say
    sampler = Sampler(lab.port)
    sampler.start()
    try:
        for args in (["protect", vm_name, "--datastore", "secondary-ds"], ["replicate", vm_name]):
            control.write_random(vm_name, offset=1 << 20, length=100_000)
            done = vr(env, *args)
            assert done.returncode == 0, done.stderr
    finally:
        sampler.done.set()
        sampler.join(timeout=30)
    assert len(state(find(si, f"{vm_name}-replica"))["restore_points"]) == 2
    standin = str(vddk_standin()).encode()
    assert any(standin in cmdline for cmdline, _ in sampler.seen.values()), "no nbdkit vddk ran"


def test_the_transport_variable_and_mount_alone_say_mount(lab: LabInfo, si: Any, vm_name: str) -> None:
    env = cli_env(lab, VR_LAB_STATE_DIR=lab.state_dir)
    env.update(VSPHERE_REPLICATOR_TRANSPORT="mount", VSPHERE_REPLICATOR_MOUNTS=lab_mounts(lab))
    protected = vr(env, "protect", vm_name, "--datastore", "secondary-ds")  # a seed is a flat base disk
    assert protected.returncode == 0, protected.stderr
    # The replica's current layer is now a redo log: the mount transport refuses it before anything,
    # naming VDDK (which the lab's default would have used).
    refused = vr(env, "replicate", vm_name)
    assert refused.returncode == 2 and "a mount can serve" in json.loads(refused.stdout)["error"]
    del env["VSPHERE_REPLICATOR_MOUNTS"], env["VSPHERE_REPLICATOR_TRANSPORT"]
    alone = vr(env, "replicate", vm_name, "--mount", f"secondary-ds={lab.datastores['secondary-ds']}")
    assert alone.returncode == 2 and "a mount can serve" in json.loads(alone.stdout)["error"]
    assert len(state(find(si, f"{vm_name}-replica"))["restore_points"]) == 1  # nothing changed


def test_a_wrong_transport_variable_is_refused_naming_it() -> None:
    assert chosen_transport(None, {}) == "mount"
    assert chosen_transport(None, {TRANSPORT_VARIABLE: "vddk"}) == "vddk"
    assert chosen_transport("mount", {TRANSPORT_VARIABLE: "vddk"}) == "mount"
    with pytest.raises(InvalidInput, match=TRANSPORT_VARIABLE):
        chosen_transport(None, {TRANSPORT_VARIABLE: "hotadd"})
    with pytest.raises(InvalidInput, match="transport must be one of"):
        chosen_transport("nfs", {})
