#!/usr/bin/env bash
# Install everything, then run the main job against a temporary lab: protect, replicate, test failover.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${VSPHERE_REPLICATOR_VENV:-.venv}/bin/vsphere-replicator" demo
