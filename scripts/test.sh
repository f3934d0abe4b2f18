#!/usr/bin/env bash
# Install everything, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ruff check .
ruff format --check .
mypy
status=0
# Two processes (one per core here), each with its own labs: the suite's time is mostly waiting on them.
python3 -m pytest -q -n auto "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$status"
