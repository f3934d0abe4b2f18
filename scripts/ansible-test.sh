#!/usr/bin/env bash
# ansible-test sanity and units for the Ansible collection (ansible_collections/vsphere_replicator/replication),
# with the project's venv (VSPHERE_REPLICATOR_VENV, else .venv; scripts/setup.sh makes it).
#
# Bootstrap: ansible-test builds one virtual environment per set of sanity requirements (pylint,
# yamllint, voluptuous, ...) and first puts pip in it with a script it downloads from its own CI
# file server, which these machines cannot reach. scripts/ansible_test_pip_bootstrap.py stands in
# for that script (pip from ensurepip, then the version ansible-test pins, from the package index).
# The requirements come from the package index on the first run; ansible-test keeps those
# environments in ~/.ansible/test/venv, so later runs need no network at all.
# Units run --local: in this venv, where vsphere_replicator is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(cd "${VSPHERE_REPLICATOR_VENV:-.venv}" && pwd)"
export PATH="$venv/bin:$PATH"
py="$venv/bin/python"
version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pip_version="$("$py" -c '
from types import SimpleNamespace
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(SimpleNamespace(version="'"$version"'"))["pip"])')"
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
cp scripts/ansible_test_pip_bootstrap.py "$cache/get_pip_${pip_version//./_}.py"

cd ansible_collections/vsphere_replicator/replication
ansible-test sanity --python "$version" --local "$@"
ansible-test units --python "$version" --local
