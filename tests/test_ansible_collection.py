"""The Ansible collection, built and installed as a user would, run by real ansible-playbook against the lab.

`ansible-galaxy collection build` makes the tarball, `ansible-galaxy collection
install` puts it in a temporary ANSIBLE_COLLECTIONS_PATH, and
examples/ansible/replication.yml (the playbook of the user guide) runs one
step at a time (`--tags`), at -vvvv, with this venv's Python as
`ansible_python_interpreter`. The playbook asserts what each module said
(`changed` or not); after each step this test looks at vCenter through plain
pyVmomi and at the datastore files, never at the modules' output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests.replication_util import (
    assert_replica_matches,
    option,
    our_source_snapshots,
    state,
)
from vsphere_replicator.lab import LabInfo, vddk_standin

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO / "ansible_collections" / "vsphere_replicator" / "replication"
PLAYBOOK = REPO / "examples" / "ansible" / "replication.yml"
BIN = Path(sys.executable).parent
MODULES = (
    "protection",
    "replicate",
    "protection_info",
    "restore_point_info",
    "failover",
    "failback",
    "snapshot_sweep",
)
STATE_KEY = "vsphere_replicator.state"


def _ansible_env(home: Path, collections: Path) -> dict[str, str]:
    """Nothing of the caller's vCenter settings: the playbook gets its connection from variables only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSPHERE_", "VR_", "ANSIBLE_"))}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PIPELINING="1",  # localhost: the module goes to the interpreter on stdin, no temp files
        ANSIBLE_RETRY_FILES_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The collection built from the repository and installed into a temporary collections path."""
    root = tmp_path_factory.mktemp("ansible")
    built = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", str(COLLECTION), "--output-path", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    tarball = root / "vsphere_replicator-replication-0.1.0.tar.gz"
    assert tarball.is_file(), built.stdout
    env = _ansible_env(root / "home", root / "collections")
    done = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", str(tarball), "-p", str(root / "collections")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (
        root / "collections/ansible_collections/vsphere_replicator/replication/meta/runtime.yml"
    ).is_file()
    yield env


def test_ansible_doc_shows_every_module_with_examples_and_the_shared_options(
    installed: dict[str, str],
) -> None:
    names = [f"vsphere_replicator.replication.{m}" for m in MODULES]
    shown = subprocess.run(
        [BIN / "ansible-doc", "--json", *names], capture_output=True, text=True, timeout=120, env=installed
    )
    assert shown.returncode == 0, shown.stderr
    docs = json.loads(shown.stdout)
    assert sorted(docs) == sorted(names)
    for name, doc in docs.items():
        assert doc["examples"].strip(), f"{name} has no EXAMPLES"
        assert doc["return"], f"{name} has no RETURN"
        options = doc["doc"]["options"]
        shared = {"hostname", "port", "username", "password", "ca_file", "thumbprint", "mounts"}
        shared |= {"transport", "vddk_libdir", "vddk_plugin"}
        assert shared <= set(options), f"{name} lacks {shared - set(options)}"
        assert "VSPHERE_PASSWORD" in " ".join(options["password"]["description"])
        assert doc["doc"]["attributes"]["check_mode"]["support"] in ("full", "partial")
    text = subprocess.run(
        [BIN / "ansible-doc", "vsphere_replicator.replication.protection"],
        capture_output=True,
        text=True,
        timeout=120,
        env=installed,
    )
    assert "EXAMPLES" in text.stdout and "state: absent" in text.stdout


class Playbook:
    """examples/ansible/replication.yml against the lab, one tagged step per run, every output kept."""

    def __init__(self, lab: LabInfo, vm: str, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.outputs: list[str] = []
        variables = {
            "vcenter_host": lab.host,
            "vcenter_port": lab.port,
            "vcenter_user": lab.user,
            "vcenter_password": lab.password,
            "vcenter_ca_file": lab.ca_file,
            "vr_transport": "vddk",  # every disk through the lab's VDDK stand-in, nothing mounted
            "vddk_plugin": str(vddk_standin()),
            "lab_state_dir": lab.state_dir,
            "vr_cli": str(BIN / "vsphere-replicator"),
            "vm": vm,
            "ansible_python_interpreter": sys.executable,
        }
        self.vars_file = tmp_path / "vars.json"  # the password reaches the playbook through a variable
        self.vars_file.write_text(json.dumps(variables))

    def step(self, tag: str, *extra: str) -> str:
        command = [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            f"@{self.vars_file}",
            "--tags",
            tag,
            "-vvvv",
            *extra,
            str(PLAYBOOK),
        ]
        ran = subprocess.run(command, capture_output=True, text=True, timeout=300, env=self.env)
        output = ran.stdout + ran.stderr
        self.outputs.append(output)
        assert ran.returncode == 0, f"step {tag} failed:\n{output[-6000:]}"
        assert "failed=0" in ran.stdout
        return output


def _named(si: Any, name: str) -> list[Any]:
    """The VMs called `name`, by one PropertyCollector read (the lab has hundreds)."""
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
        )
        found = si.content.propertyCollector.RetrieveContents([spec])
    finally:
        view.DestroyView()
    return [o.obj for o in found if o.propSet[0].val == name]


def find(si: Any, name: str) -> Any:
    (vm,) = _named(si, name)
    return vm


@pytest.fixture
def playbook(
    lab: LabInfo, installed: dict[str, str], tmp_path: Path, fresh_vm: Callable[[], str]
) -> Playbook:
    return Playbook(lab, fresh_vm(), installed, tmp_path)


def test_the_playbook_protects_replicates_fails_over_and_back_and_leaks_no_password(
    lab: LabInfo, si: Any, playbook: Playbook
) -> None:
    vm = json.loads(playbook.vars_file.read_text())["vm"]
    replica_name = f"{vm}-replica"

    source = find(si, vm)  # a pyVmomi object reads its properties afresh at every access
    playbook.step("check")  # check mode: protect would change something ...
    assert _named(si, replica_name) == []  # ... and nothing was made
    assert our_source_snapshots(source) == []
    assert option(source, STATE_KEY) is None

    playbook.step("protect")  # protect (changed), protect again (not changed)
    replica = find(si, replica_name)
    assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001"]
    assert_replica_matches(lab, source, replica, "rp-000001")
    assert our_source_snapshots(source) == []
    assert state(replica)["settings"]["keep"] == 5

    shown = playbook.step("settings", "--diff")
    recorded = state(replica)["settings"]
    assert (recorded["keep"], recorded["quiesce"], recorded["target_rpo"]) == (3, "try", 1800.0)
    assert '-    "keep": 5,' in shown and '+    "keep": 3,' in shown

    # Guest writes, a cycle (changed), another (nothing changed); then both info modules and a dry-run
    # sweep, which change nothing: still two restore points, the second one the source's bytes.
    playbook.step("replicate,info")
    assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001", "rp-000002"]
    assert_replica_matches(lab, source, replica, "rp-000002")
    assert our_source_snapshots(source) == []

    playbook.step("test_failover")
    (copy,) = _named(si, f"{vm}-failover-test")
    assert copy.runtime.powerState == "poweredOn"
    assert source.runtime.powerState == "poweredOn"
    playbook.step("test_cleanup,failover")  # the copy removed (twice); a planned failover (twice)
    assert _named(si, f"{vm}-failover-test") == []
    assert source.runtime.powerState == "poweredOff"
    assert replica.runtime.powerState == "poweredOn"
    assert state(replica)["promoted"] is True

    playbook.step("failback")  # failback, then again (not changed)
    assert source.runtime.powerState == "poweredOn"
    assert replica.runtime.powerState == "poweredOff"
    back = state(replica)
    assert back["promoted"] is False and back["source"]["name"] == vm

    playbook.step("unprotect")  # gives the lab back: the replica is deleted, then nothing to do
    assert _named(si, replica_name) == []
    assert option(source, STATE_KEY) is None

    assert len(playbook.outputs) == 8
    for output in playbook.outputs:
        assert lab.password not in output
    assert any("<localhost> EXEC" in o for o in playbook.outputs), "not run at -vvvv"
    # Every module ran with the VDDK transport (its invocation's arguments, shown at -vvvv).
    invoked = [o for o in playbook.outputs if '"invocation"' in o]
    assert invoked and all('"transport": "vddk"' in o for o in invoked)
