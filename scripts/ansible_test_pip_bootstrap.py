"""Stands in for the get-pip script ansible-test downloads before its first sanity or units run.

ansible-test makes a virtual environment without pip for each set of test requirements, then
runs a "get-pip" script it fetches from its own CI file server, a host this project's machines
cannot reach. scripts/ansible-test.sh puts this file where ansible-test caches that script
(~/.ansible/test/cache/get_pip_<version>.py), so ansible-test runs it instead: it installs pip
from the Python's own bundled copy (ensurepip, no network), then the pip version ansible-test
asked for from the package index, as the real script would. It takes the real script's
arguments: pip options and requirements, and --no-setuptools / --no-wheel.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str]) -> int:
    extras = {"--no-setuptools": "setuptools", "--no-wheel": "wheel"}
    wanted = [a for a in argv if a not in extras]
    # get-pip installs setuptools and wheel too unless told not to.
    wanted += [package for flag, package in extras.items() if flag not in argv]
    python = sys.executable
    subprocess.run([python, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run([python, "-m", "pip", "install", "--quiet", *wanted], check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
