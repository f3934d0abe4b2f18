"""The lab's Go sources pass their own tests under the race detector, gofmt and go vet.

The Go tests (vsphere_replicator/lab/vcsim/*_test.go) start the lab in-process
and race snapshot, reconfigure, write and read operations on one and on
several VMs; ``-race`` makes any unsynchronised access a failure. Needs Go,
govmomi's sources and gcc (cgo), as scripts/setup.sh installs them. With a
warm build cache this takes about 20 s; the first run compiles govmomi with
race instrumentation, a minute or two more.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vsphere_replicator.lab.build import SOURCE_DIR, go_binary, go_env


def go(*args: str, cgo: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [go_binary(), *args],
        cwd=SOURCE_DIR,
        env=go_env(cgo=cgo),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.lab  # starts labs in-process and builds with -race
def test_the_lab_passes_its_go_tests_under_the_race_detector() -> None:
    if shutil.which("gcc") is None:
        pytest.fail("go test -race needs cgo: apt-get install gcc")
    result = go("test", "-race", "-count=1", ".", cgo=True, timeout=900)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


def test_the_lab_go_sources_are_gofmt_clean() -> None:
    gofmt = shutil.which("gofmt")
    assert gofmt is not None, "gofmt comes with golang-go"
    result = subprocess.run(
        [gofmt, "-l", "."], cwd=SOURCE_DIR, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", f"not gofmt-formatted: {result.stdout}"


@pytest.mark.lab  # compiles the lab
def test_go_vet_finds_nothing_in_the_lab() -> None:
    result = go("vet", ".")
    assert result.returncode == 0, result.stderr
