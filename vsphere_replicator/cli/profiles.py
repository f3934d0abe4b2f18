"""Where the commands connect, and where they write: the environment profile, the lab, the mounts.

Connection: the VSPHERE_* variables, `--profile NAME` (VSPHERE_<NAME>_HOST and
friends, and only those), or, when neither names a vCenter, the lab that
`lab up` started (the one in VR_LAB_STATE_DIR, else the default one).
Disks are reached by `--transport`, else VSPHERE_REPLICATOR_TRANSPORT, else
through datastores mounted here (`--mount DS=DIR`, repeatable, and
VSPHERE_REPLICATOR_MOUNTS). The lab's environment names vddk through the lab's
VDDK stand-in: its layers are redo logs, as on ESXi, which no mount can write.
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
from vsphere_replicator.lab import LabInfo, lab_status, vddk_standin
from vsphere_replicator.replication import MountedDatastores, Sites
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.replication.sessions import MOUNTS_VARIABLE as MOUNTS_VARIABLE  # cli/lab.py
from vsphere_replicator.replication.sessions import TRANSPORT_VARIABLE as TRANSPORT_VARIABLE  # cli/lab.py
from vsphere_replicator.replication.sessions import VDDK_PLUGIN_VARIABLE as VDDK_PLUGIN_VARIABLE
from vsphere_replicator.replication.sessions import (
    chosen_transport,
    disk_access,
    mounted_datastores,
    profile_environment,
)

LAB_STATE_VARIABLE = "VR_LAB_STATE_DIR"


def lab_environment(lab: LabInfo) -> dict[str, str]:
    """The variables that point the commands at `lab`: its vCenter, its VDDK (the stand-in), its directories.

    Disks go through VDDK by default, as against ESXi; the datastore
    directories stay exported for `--transport mount` on a lab whose layers
    are flat (`lab up --no-redo-logs`).
    """
    return {
        "VSPHERE_HOST": lab.host,
        "VSPHERE_PORT": str(lab.port),
        "VSPHERE_USER": lab.user,
        "VSPHERE_PASSWORD": lab.password,
        "VSPHERE_CA_FILE": lab.ca_file,
        MOUNTS_VARIABLE: ",".join(f"{k}={v}" for k, v in lab.datastores.items()),
        TRANSPORT_VARIABLE: "vddk",
        VDDK_PLUGIN_VARIABLE: str(vddk_standin()),
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

    def transport(self, args: argparse.Namespace) -> str:
        """--transport (mount when only --mount is given), else VSPHERE_REPLICATOR_TRANSPORT of the
        session's environment, else vddk when this vCenter is a running lab (its layers are redo
        logs, as ESXi's), else mount."""
        given = getattr(args, "transport", None)
        if given is None and getattr(args, "mount", None):
            given = "mount"  # --mount names the mount transport
        variables = self._variables()
        if given is None and not variables.get(TRANSPORT_VARIABLE) and self._is_lab():
            return "vddk"
        return chosen_transport(given, variables)

    def _is_lab(self) -> bool:
        """This vCenter is one of the labs running here (by its instance UUID, unique to each lab)."""
        places = {self.env.get(LAB_STATE_VARIABLE), os.environ.get(LAB_STATE_VARIABLE)}
        labs = [lab_status(p) for p in places if p] + [lab_status(site=site) for site in (None, "B")]
        uuids = {lab.instance_uuid for lab in labs if lab is not None and lab.instance_uuid}
        return bool(uuids) and self.conn.content.about.instanceUuid in uuids

    def disks(self, args: argparse.Namespace) -> tuple[DiskAccess, DiskAccess | None]:
        """(replica access, source access) the command's transport chooses (`transport`).

        `mount`: the mounted datastores, and the library's default source
        (None). `vddk`: one VDDKDisks for both sides; no mount is needed.
        """
        if self.transport(args) != "vddk":
            return self.mounts(args.mount), None
        variables = self._variables()
        standin = None if variables.get(VDDK_PLUGIN_VARIABLE) or not self._is_lab() else str(vddk_standin())
        return disk_access(
            self.conn,
            variables,
            transport="vddk",
            vddk_libdir=args.vddk_libdir,
            vddk_plugin=args.vddk_plugin or standin,
        )

    def _variables(self) -> dict[str, str]:
        """The session's environment over this process's (the lab's names no VDDK library)."""
        return {**os.environ, **self.env}


@contextmanager
def session(profile: str | None, *, role_mounts: Mapping[str, str] | None = None) -> Iterator[Session]:
    """A connection to the vCenter `profile` names (or the default one, or the lab), closed afterwards.

    `role_mounts` replaces the mounts variable with a site's own (two sites).
    """
    env = {**environment(profile), **(role_mounts or {})}
    with connect(environ=env, profile=profile or None) as conn:
        yield Session(conn, env)


# -- two sites ----------------------------------------------------------------------------------------

SOURCE_ROLE, TARGET_ROLE = "source", "target"


def site_profiles(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(source profile, target profile) of a command.

    --source-profile / --target-profile; else the `source` / `target`
    profile when VSPHERE_SOURCE_HOST / VSPHERE_TARGET_HOST is set (what
    `lab env --as source|target` exports); else --profile, one vCenter for
    both sites.
    """
    base = getattr(args, "profile", None)
    source = getattr(args, "source_profile", None) or (
        SOURCE_ROLE if os.environ.get("VSPHERE_SOURCE_HOST") else base
    )
    target = getattr(args, "target_profile", None) or (
        TARGET_ROLE if os.environ.get("VSPHERE_TARGET_HOST") else source
    )
    return source, target


def _role_mounts(profile: str | None) -> dict[str, str]:
    """A site's own mounts (VSPHERE_REPLICATOR_<PROFILE>_MOUNTS) as this process's mounts, when set."""
    if profile:
        mounts = os.environ.get(f"VSPHERE_REPLICATOR_{profile.upper()}_MOUNTS")
        if mounts:
            return {MOUNTS_VARIABLE: mounts}
    return {}


@dataclass(frozen=True, slots=True)
class SiteSessions:
    """The source site's session and the target site's: the same one for one vCenter."""

    source: Session
    target: Session

    @property
    def sites(self) -> Sites:
        return Sites.one(self.target.conn) if self.single else Sites(self.source.conn, self.target.conn)

    @property
    def single(self) -> bool:
        return self.source is self.target

    def verify_access(self, args: argparse.Namespace, source_access: DiskAccess | None) -> DiskAccess | None:
        """What reads a new restore point back: one vCenter's source side (None: its HTTP /folder),
        or across vCenters the target's VDDK; a redo-log layer has no flat file for /folder."""
        if self.single:
            return source_access
        return self.target.disks(args)[0] if self.target.transport(args) == "vddk" else None

    def failback_disks(self, args: argparse.Namespace) -> tuple[DiskAccess, DiskAccess | None]:
        """(replica access, source access) for failback: one vCenter's pair, or across two each site's
        own access, which both reads and writes there (the original is written on the source site)."""
        if self.single:
            return self.target.disks(args)
        return self.target.disks(args)[0], self.source.disks(args)[0]

    def disks(self, args: argparse.Namespace) -> tuple[DiskAccess, DiskAccess | None]:
        """(replica access on the target site, source access on the source site) for --transport."""
        if self.single:
            return self.target.disks(args)
        replica_access, _ = self.target.disks(args)
        if self.source.transport(args) != "vddk":
            return replica_access, None  # the source is read over its vCenter's HTTP /folder
        _, source_access = self.source.disks(args)
        return replica_access, source_access


@contextmanager
def target_session(args: argparse.Namespace) -> Iterator[Session]:
    """The recovery site's session alone: what status, restore points and recovery need."""
    _, target = site_profiles(args)
    with session(target, role_mounts=_role_mounts(target)) as s:
        yield s


@contextmanager
def site_sessions(args: argparse.Namespace) -> Iterator[SiteSessions]:
    """Both sites' sessions (one, when both are the same vCenter)."""
    source, target = site_profiles(args)
    with session(target, role_mounts=_role_mounts(target)) as t:
        if source == target:
            yield SiteSessions(t, t)
            return
        with session(source, role_mounts=_role_mounts(source)) as s:
            yield SiteSessions(s, t)
