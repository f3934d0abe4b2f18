"""The replication commands end to end: a policy file run by the CLI, checked with pyVmomi and hashes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.replication_util import (
    all_vms,
    assert_replica_matches,
    find,
    our_source_snapshots,
    source_hashes,
    state,
)
from tests.test_replication_crash import cli_env
from vsphere_replicator.replication import CycleSettings, MountedDatastores, ReplicaTarget, protect


def cli(lab: Any, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vsphere_replicator.cli", *args]
    return subprocess.run(command, env=cli_env(lab), capture_output=True, text=True, timeout=300)


def on_terminal(lab: Any, *args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (120 columns), stdout on a pipe, as a person's shell
    with `> out` would; returns the exit code, stdout and what the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = [sys.executable, "-m", "vsphere_replicator.cli", *args]
    process = subprocess.Popen(
        command, env=cli_env(lab), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, text=True
    )
    os.close(slave)
    shown: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        out, _ = process.communicate(timeout=300)
    finally:
        reader.join(timeout=10)
        os.close(master)
    return process.returncode, out, b"".join(shown).decode(errors="replace")


def records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_policy_file_protects_then_replicates_and_keeps_one_clone(
    lab: Any, si: Any, control: Any, fresh_vm: Callable[[], str], tmp_path: Path
) -> None:
    a, b, c = fresh_vm(), fresh_vm(), fresh_vm()
    for i, vm in enumerate((a, b, c)):
        control.write_random(vm, offset=4096 * i, length=150_000, seed=i)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"""version: 1
limits: {{total: 2, per_host: 2, per_datastore: 2, bandwidth: 200MiB/s}}
protections:
  - name: pair
    select: {{names: ["{a}", "{b}"]}}
    target: {{datastore: secondary-ds}}
    policy: point-in-time
    settings: {{interval: 1h, keep: 3, verify: true}}
  - name: copies
    select: {{names: ["{c}"]}}
    target: {{datastore: secondary-ds}}
    policy: clone
    settings: {{interval: 1d, keep: 1}}
"""
    )
    first = cli(lab, "run", str(policy), "--once", "--json")
    assert first.returncode == 0, first.stderr
    assert sorted((r["vm"], r["ok"]) for r in records(first.stdout)) == [(a, True), (b, True), (c, True)]
    for vm in (a, b):
        control.write_random(vm, offset=1 << 20, length=70_000, seed=9)
    second = cli(lab, "run", str(policy), "--once", "--json")
    assert second.returncode == 0, second.stderr
    for vm in (a, b):
        replica = find(si, f"{vm}-replica")
        assert [p["id"] for p in state(replica)["restore_points"]] == ["rp-000001", "rp-000002"]
        assert_replica_matches(lab, find(si, vm), replica, "rp-000002")
        assert our_source_snapshots(find(si, vm)) == []
    clones = [v for v in all_vms(si) if v.name.startswith(f"{c}-clone-")]
    assert len(clones) == 1
    assert source_hashes(lab, clones[0]) == source_hashes(lab, find(si, c))

    # Named: other tests' VMs in this lab may be stuck on purpose (exit 1).
    status = cli(lab, "status", a, b, "--json", "--rpo", "1h")
    assert status.returncode == 0, status.stdout
    rows = {r["vm"]: r for r in json.loads(status.stdout)}
    assert rows[a]["compliant"] is True and rows[a]["latest_point"] == "rp-000002"
    late = cli(lab, "status", a, b, "--rpo", "1s")
    assert late.returncode == 3 and "NO" in late.stdout

    points = cli(lab, "restore-points", a, "--json")
    assert [p["id"] for p in json.loads(points.stdout)] == ["rp-000001", "rp-000002"]
    verified = cli(lab, "verify", a, "--restore-point", "rp-000002")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr


def test_invalid_policy_file_is_rejected_with_file_line_and_reason_and_nothing_runs(
    lab: Any, tmp_path: Path
) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(
        "version: 1\nprotections:\n  - name: x\n    select: {names: [lab-vm-0099]}\n"
        "    target: {datastore: secondary-ds}\n    policy: point-in-time\n    settings: {intervall: 1h}\n"
    )
    result = cli(lab, "run", str(policy), "--once")
    assert result.returncode == 2
    assert f"{policy}:7:" in result.stderr and "intervall" in result.stderr
    assert result.stdout == ""


def test_a_policy_file_selects_vms_by_vsphere_tag(
    lab: Any, si: Any, fresh_vm: Callable[[], str], tmp_path: Path
) -> None:
    import uuid

    from tests.test_lab_tags import RestTagging

    tagged, untagged = fresh_vm(), fresh_vm()
    rest = RestTagging(lab)
    try:
        category = f"tier-{uuid.uuid4().hex[:8]}"
        tag = rest.tag(rest.category(category), "gold")
        rest.attach(tag, "VirtualMachine", find(si, tagged)._moId)
    finally:
        rest.close()
    policy = tmp_path / "tags.yaml"
    policy.write_text(
        f"""version: 1
protections:
  - name: gold
    select: {{names: ["{tagged}", "{untagged}"], tags: ["{category}:gold"]}}
    target: {{datastore: secondary-ds}}
    policy: continuous
    settings: {{target_rpo: 5m}}
"""
    )
    result = cli(lab, "run", str(policy), "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["vm"] for r in records(result.stdout)] == [tagged]
    assert state(find(si, f"{tagged}-replica"))["source"]["name"] == tagged


def test_a_terminal_shows_progress_with_bytes_rate_and_eta_and_a_pipe_or_json_shows_none(
    lab: Any, conn: Any, control: Any, vm_name: str
) -> None:
    access = MountedDatastores(lab.datastores, conn=conn)
    target = ReplicaTarget(datastore="secondary-ds")
    protect(conn, vm_name, target, settings=CycleSettings(verify=True), replica_access=access)

    control.write_random(vm_name, offset=0, length=3 << 20, seed=1)
    code, out, shown = on_terminal(lab, "replicate", vm_name, "--chunk", "64K")
    assert code == 0, shown
    assert "restore point rp-000002" in out and "\r" not in out
    assert f"replicating {vm_name}" in shown and "100%" in shown
    assert "3.00M/3.00M" in shown and "B/s]" in shown and "<" in shown  # bytes, rate, elapsed<remaining

    code, out, shown = on_terminal(lab, "verify", vm_name)
    assert code == 0 and "intact" in out, shown
    assert f"verifying {vm_name}" in shown and "100%" in shown

    control.write_random(vm_name, offset=4 << 20, length=1 << 20, seed=2)
    code, out, shown = on_terminal(lab, "replicate", vm_name, "--json")
    assert code == 0, shown
    assert json.loads(out)["restore_point"] == "rp-000003"
    assert "replicating" not in shown and "%|" not in shown

    control.write_random(vm_name, offset=6 << 20, length=1 << 20, seed=3)
    piped = cli(lab, "replicate", vm_name)
    assert piped.returncode == 0, piped.stderr
    assert "restore point rp-000004" in piped.stdout
    assert piped.stderr == ""  # no bar, no carriage return, nothing


def test_status_exits_1_while_a_cycle_failed_even_with_a_missed_rpo_and_the_error_is_json(
    lab: Any, conn: Any, control: Any, vm_name: str
) -> None:
    access = MountedDatastores(lab.datastores, conn=conn)
    protect(conn, vm_name, ReplicaTarget(datastore="secondary-ds"), replica_access=access)
    assert cli(lab, "status", vm_name).returncode == 0

    control.write_random(vm_name, offset=0, length=1 << 20, seed=4)
    control.fail_method("CreateSnapshot_Task", "FileFault", message="datastore is read-only")
    failed = cli(lab, "replicate", vm_name, "--json")
    assert failed.returncode == 1, failed.stderr
    error = json.loads(failed.stdout)
    assert error["exit_code"] == 1 and error["kind"] == "TaskFailed"
    assert "datastore is read-only" in error["error"]
    assert [line for line in failed.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {error['error']}"
    ]

    stuck = cli(lab, "status", vm_name)
    assert stuck.returncode == 1, stuck.stdout + stuck.stderr
    assert "TaskFailed: " in stuck.stdout and "datastore is read-only" in stuck.stdout
    assert cli(lab, "status", vm_name, "--rpo", "1s").returncode == 1  # stuck is worse than late

    assert cli(lab, "replicate", vm_name).returncode == 0  # a good cycle clears the error
    assert cli(lab, "status", vm_name).returncode == 0
