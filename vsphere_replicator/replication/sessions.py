"""A session from a connection profile's name, built from this machine's own environment.

What a proxy needs to work on a VM is a vCenter session and a way to the
disks. Both come from the environment of the machine that does the work,
never from whoever asked for it: the default profile (VSPHERE_HOST,
VSPHERE_USER, ...) or a named one (VSPHERE_<NAME>_HOST, ... and only those),
the datastores mounted here (VSPHERE_REPLICATOR_MOUNTS), the VDDK library
(VSPHERE_REPLICATOR_VDDK_LIBDIR, VSPHERE_REPLICATOR_VDDK_PLUGIN), the
transport when none is given (VSPHERE_REPLICATOR_TRANSPORT). So a job
sent to a fleet worker carries a profile name and a transport, no secret;
the CLI builds its sessions the same way (and adds the lab as a fallback).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from vsphere_replicator.connection import Connection, connect, profile_prefix
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.replication.access import DiskAccess, MountedDatastores, VDDKDisks, parse_mounts

__all__ = [
    "MOUNTS_VARIABLE",
    "TRANSPORTS",
    "TRANSPORT_VARIABLE",
    "VDDK_LIBDIR_VARIABLE",
    "VDDK_PLUGIN_VARIABLE",
    "ProfileSession",
    "chosen_transport",
    "disk_access",
    "mounted_datastores",
    "open_session",
    "profile_environment",
    "profile_session",
]

MOUNTS_VARIABLE = "VSPHERE_REPLICATOR_MOUNTS"
VDDK_LIBDIR_VARIABLE = "VSPHERE_REPLICATOR_VDDK_LIBDIR"
VDDK_PLUGIN_VARIABLE = "VSPHERE_REPLICATOR_VDDK_PLUGIN"
TRANSPORT_VARIABLE = "VSPHERE_REPLICATOR_TRANSPORT"
TRANSPORTS = ("mount", "vddk")


def chosen_transport(given: str | None, env: Mapping[str, str]) -> str:
    """`given`, else `env`'s VSPHERE_REPLICATOR_TRANSPORT (`lab env` sets vddk), else mount."""
    if given is not None:
        if given not in TRANSPORTS:
            raise InvalidInput(f"transport must be one of {', '.join(TRANSPORTS)}, not {given!r}")
        return given
    named = env.get(TRANSPORT_VARIABLE, "").strip()
    if not named:
        return "mount"
    if named not in TRANSPORTS:
        raise InvalidInput(f"{TRANSPORT_VARIABLE}={named!r}: a transport is one of {', '.join(TRANSPORTS)}")
    return named


def profile_environment(profile: str | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to connect with for `profile` (None: the default one), from `environ` (os.environ).

    A named profile must be set here (its VSPHERE_<NAME>_HOST at least):
    InvalidInput says which variables to export otherwise.
    """
    env = dict(os.environ if environ is None else environ)
    if profile:
        prefix = profile_prefix(profile)
        if not env.get(prefix + "HOST"):
            raise InvalidInput(f"profile {profile!r} is not set: export {prefix}HOST, {prefix}USER, ...")
    return env


def mounted_datastores(
    conn: Connection, env: Mapping[str, str], mounts: Sequence[str] = ()
) -> MountedDatastores:
    """`env`'s VSPHERE_REPLICATOR_MOUNTS, then each of `mounts` ("DS=DIR,..."; the later wins).

    Each is proven to be the datastore before anything is written through it.
    """
    found = parse_mounts(env.get(MOUNTS_VARIABLE, ""))
    for item in mounts:
        found.update(parse_mounts(item))
    return MountedDatastores(found, conn=conn)


def disk_access(
    conn: Connection,
    env: Mapping[str, str],
    *,
    transport: str = "mount",
    mounts: Sequence[str] = (),
    vddk_libdir: str | None = None,
    vddk_plugin: str | None = None,
) -> tuple[DiskAccess, DiskAccess | None]:
    """(replica access, source access) for `transport`.

    `mount`: the datastores mounted here (`mounted_datastores`) and the
    library's default source (None). `vddk`: one VDDKDisks for both sides.
    """
    if transport not in TRANSPORTS:
        raise InvalidInput(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if transport == "mount":
        return mounted_datastores(conn, env, mounts), None
    vddk = VDDKDisks(
        conn,
        libdir=vddk_libdir or env.get(VDDK_LIBDIR_VARIABLE) or None,
        plugin=vddk_plugin or env.get(VDDK_PLUGIN_VARIABLE) or "vddk",
    )
    return vddk, vddk


@dataclass(frozen=True, slots=True)
class ProfileSession:
    """A connection, the environment it was made from, and the disk access its transport gives."""

    conn: Connection
    env: Mapping[str, str]
    replica_access: DiskAccess
    source_access: DiskAccess | None


def open_session(
    profile: str | None, *, transport: str = "mount", environ: Mapping[str, str] | None = None
) -> ProfileSession:
    """Log in with `profile` from this machine's environment; the caller closes `conn` when done."""
    env = profile_environment(profile, environ)
    conn = connect(environ=env, profile=profile or None)
    try:
        replica_access, source_access = disk_access(conn, env, transport=transport)
    except BaseException:
        conn.close()
        raise
    return ProfileSession(conn, env, replica_access, source_access)


@contextmanager
def profile_session(
    profile: str | None, *, transport: str = "mount", environ: Mapping[str, str] | None = None
) -> Iterator[ProfileSession]:
    """`open_session` for the block: the connection is closed afterwards."""
    opened = open_session(profile, transport=transport, environ=environ)
    with opened.conn:
        yield opened
