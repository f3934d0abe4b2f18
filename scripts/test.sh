#!/usr/bin/env bash
# Install everything, then run the linters and the whole test suite, in the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py="${VSPHERE_REPLICATOR_VENV:-.venv}/bin/python"
"$py" -m ruff check .
"$py" -m ruff format --check .
"$py" -m mypy
# The Ansible collection's own checks: ansible-test sanity and units (the first run installs their
# requirements, see scripts/ansible-test.sh; later runs reuse them).
bash scripts/ansible-test.sh
status=0
# Two processes per core, each with its own labs: the suite mostly waits on the labs (half the CPU
# sat idle with one per core; tests/test_reliability.py took 207 s with 2 workers, 131 s with 4 on
# 2 cores).
workers=$((2 * $(nproc)))
# Byte-code once, here: with PYTHONDONTWRITEBYTECODE set (it is on these machines) every CLI process
# and every nbdkit the tests start would compile the package again (0.3 s of 1.2 s for `--help`).
"$py" -m compileall -q vsphere_replicator tests >/dev/null
"$py" -m pytest -q -n "$workers" "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$status"
