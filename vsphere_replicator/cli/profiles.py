"""Where the commands connect, and where they write: the environment profile, the lab, the mounts.

Connection: the VSPHERE_* variables, `--profile NAME` (VSPHERE_<NAME>_HOST and
friends, and only those), or, when neither names a vCenter, the lab that
`lab up` started (the one in VR_LAB_STATE_DIR, else the default one).
Replica disks are written through datastores mounted here: `--mount DS=DIR`
(repeatable), VSPHERE_REPLICATOR_MOUNTS, or the lab's datastore directories.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vsphere_replicator.connection import Connection, connect
from vsphere_replicator.errors import InvalidInput, ReplicatorError
from vsphere_replicator.lab import LabInfo, lab_status
from vsphere_replicator.replication import MountedDatastores
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.replication.sessions import MOUNTS_VARIABLE as MOUNTS_VARIABLE  # cli/lab.py
from vsphere_replicator.replication.sessions import disk_access, mounted_datastores, profile_environment

LAB_STATE_VARIABLE = "VR_LAB_STATE_DIR"


def lab_environment(lab: LabInfo) -> dict[str, str]:
    """The variables that point the commands at `lab`: its vCenter and its datastore directories."""
    return {
        "VSPHERE_HOST": lab.host,
        "VSPHERE_PORT": str(lab.port),
        "VSPHERE_USER": lab.user,
        "VSPHERE_PASSWORD": lab.password,
        "VSPHERE_CA_FILE": lab.ca_file,
        MOUNTS_VARIABLE: ",".join(f"{k}={v}" for k, v in lab.datastores.items()),
    }


def running_lab(state_dir: Path | None) -> LabInfo:
    """The lab in `state_dir` (default: VR_LAB_STATE_DIR, else the per-user one); an error if none runs."""
    info = lab_status(state_dir)
    if info is None:
        raise ReplicatorError("no lab is running (start one with: vsphere-replicator lab up)")
    return info


def environment(profile: str | None) -> dict[str, str]:
    """The variables to connect with: the environment (for a named or the default profile) or the lab's.

    A named profile is read by `settings_from(profile=...)` from its own
    VSPHERE_<NAME>_* variables only, never completed from the default ones.
    """
    env = profile_environment(profile)  # a named profile must be set (replication/sessions.py)
    if profile:
        return env
    if env.get("VSPHERE_HOST"):
        return env
    lab = lab_status(env.get(LAB_STATE_VARIABLE))
    if lab is None:
        raise InvalidInput("no vCenter given: set VSPHERE_HOST (and friends), --profile, or start the lab")
    return lab_environment(lab)


@dataclass(frozen=True, slots=True)
class Session:
    """A connection and the environment it was made from (which also says where datastores are mounted)."""

    conn: Connection
    env: Mapping[str, str]

    def mounts(self, extra: Sequence[str] | None = ()) -> MountedDatastores:
        """The datastores mounted here: the environment's, then each `--mount` (the later wins).

        Each is proven to be the datastore before anything is written through it.
        """
        return mounted_datastores(self.conn, self._variables(), extra or ())

    def disks(self, args: argparse.Namespace) -> tuple[DiskAccess, DiskAccess | None]:
        """(replica access, source access) the command's --transport chooses.

        `mount`: the mounted datastores, and the library's default source
        (None). `vddk`: one VDDKDisks for both sides; no mount is needed.
        """
        if getattr(args, "transport", "mount") != "vddk":
            return self.mounts(args.mount), None
        return disk_access(
            self.conn,
            self._variables(),
            transport="vddk",
            vddk_libdir=args.vddk_libdir,
            vddk_plugin=args.vddk_plugin,
        )

    def _variables(self) -> dict[str, str]:
        """The session's environment over this process's (the lab's names no VDDK library)."""
        return {**os.environ, **self.env}


@contextmanager
def session(profile: str | None) -> Iterator[Session]:
    """A connection to the vCenter `profile` names (or the default one, or the lab), closed afterwards."""
    env = environment(profile)
    with connect(environ=env, profile=profile or None) as conn:
        yield Session(conn, env)
