#!/usr/bin/env bash
# Install what vsphere_replicator and its lab need on a fresh Debian machine: the Debian
# packages (Go and govmomi's sources for the lab, qemu-utils, nbdkit), then the package with
# its test, dev, notebook, ansible and fleet extras, in editable mode, into a project virtual
# environment (.venv, or VSPHERE_REPLICATOR_VENV): a stock Debian 12 refuses pip installs into its
# own Python (PEP 668).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(golang-go golang-github-vmware-govmomi-dev qemu-utils nbdkit nbdkit-plugin-python libnbd-bin openssl ca-certificates python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

venv="${VSPHERE_REPLICATOR_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test,dev,notebook,ansible,fleet]'
