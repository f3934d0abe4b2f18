#!/usr/bin/env bash
# Install what vsphere_replicator and its lab need on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(golang-go golang-github-vmware-govmomi-dev qemu-utils nbdkit openssl ca-certificates)
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

python3 -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
