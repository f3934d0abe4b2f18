# Copyright: (c) 2026, vsphere_replicator contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What every module of the collection shares: one argument spec, the connection, results, errors.

A module is a thin adapter: its parameters become one call of the
installed `vsphere_replicator` library, whose result goes back through
`exit_json` as plain data. A `ReplicatorError` becomes `fail_json` with the
error's message and its fields (`error` names the class, `vm`, `fault`, ...).
Nothing here sleeps, polls or finds objects: the library does, and raises
when something is missing.

The library is imported under a guard so that `ansible-doc` and the sanity
import test load the modules without it; a module run without it fails with
`missing_required_lib`, naming the package and the version it needs.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

LIBRARY = "vsphere-replicator>=0.1.0"

try:
    from vsphere_replicator.connection import Connection, connect
    from vsphere_replicator.errors import InvalidInput, ReplicatorError
    from vsphere_replicator.inventory import VMSelector, get_vm
    from vsphere_replicator.replication import MountedDatastores, VDDKDisks
    from vsphere_replicator.replication.access import DiskAccess
    from vsphere_replicator.units import parse_duration
except ImportError:
    LIBRARY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    LIBRARY_IMPORT_ERROR = None

# Results the module API keeps for itself: an error's field of the same name is left out of fail_json.
_RESERVED = frozenset({"msg", "exception", "changed", "failed", "skipped", "invocation", "warnings", "diff"})
_MOREF = re.compile(r"^vm-\d+$")


def connection_argument_spec() -> dict[str, Any]:
    """The options every module takes to reach vCenter (doc fragment `connection`)."""
    return {
        "hostname": {"type": "str", "fallback": (env_fallback, ["VSPHERE_HOST"])},
        "port": {"type": "int", "fallback": (env_fallback, ["VSPHERE_PORT"])},
        "username": {"type": "str", "aliases": ["user"], "fallback": (env_fallback, ["VSPHERE_USER"])},
        "password": {
            "type": "str",
            "aliases": ["pass", "pwd"],
            "no_log": True,
            "fallback": (env_fallback, ["VSPHERE_PASSWORD"]),
        },
        "ca_file": {"type": "path", "fallback": (env_fallback, ["VSPHERE_CA_FILE"])},
        "thumbprint": {"type": "str", "fallback": (env_fallback, ["VSPHERE_THUMBPRINT"])},
    }


def mounts_argument_spec() -> dict[str, Any]:
    """How the modules that read or write disks reach them (doc fragment `mounts`): `transport`,
    the datastores mounted on the managed node (`mounts`) or VDDK (`vddk_libdir`, `vddk_plugin`)."""
    return {
        "mounts": {"type": "dict", "fallback": (env_fallback, ["VSPHERE_REPLICATOR_MOUNTS"])},
        "transport": {
            "type": "str",
            "choices": ["mount", "vddk"],
            "fallback": (env_fallback, ["VSPHERE_REPLICATOR_TRANSPORT"]),
        },
        "vddk_libdir": {"type": "path", "fallback": (env_fallback, ["VSPHERE_REPLICATOR_VDDK_LIBDIR"])},
        "vddk_plugin": {"type": "str", "fallback": (env_fallback, ["VSPHERE_REPLICATOR_VDDK_PLUGIN"])},
    }


def argument_spec(**own: dict[str, Any]) -> dict[str, Any]:
    """The shared options, then the module's own.

    Every module takes `mounts`, even one that writes no disk (it ignores it), so that
    module_defaults can set it once for the action group.
    """
    return {**connection_argument_spec(), **mounts_argument_spec(), **own}


def require_library(module: AnsibleModule) -> None:
    """Fail the module, naming the package to install, when `vsphere_replicator` cannot be imported."""
    if LIBRARY_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib(LIBRARY), exception=LIBRARY_IMPORT_ERROR)


@contextmanager
def connection(module: AnsibleModule) -> Iterator[Connection]:
    """A vCenter session from the module's parameters alone (their env fallbacks already applied).

    The library reads no environment here: a missing value is an error naming
    the option, never completed from a variable Ansible did not show.
    """
    p = module.params
    with connect(
        p["hostname"],
        p["username"],
        p["password"],
        port=p["port"],
        ca_file=p["ca_file"],
        thumbprint=p["thumbprint"],
        environ={},
    ) as conn:
        yield conn


def disk_access(module: AnsibleModule, conn: Connection) -> tuple[DiskAccess, DiskAccess | None]:
    """(replica access, source access) of `transport`: `mount` (the default) writes through the
    datastores mounted on the managed node (`mounts`) and reads the source over vCenter's HTTP
    (None); `vddk` reaches every disk through one nbdkit vddk per disk (ESXi's redo logs too)."""
    p = module.params
    if (p.get("transport") or "mount") == "vddk":
        vddk = VDDKDisks(conn, libdir=p.get("vddk_libdir"), plugin=p.get("vddk_plugin") or "vddk")
        return vddk, vddk
    given = p.get("mounts") or {}
    return MountedDatastores({str(k): str(v) for k, v in given.items()}, conn=conn), None


def vm_name(conn: Connection, vm: str) -> str:
    """The name of the VM `vm` names: a managed object id such as vm-42 is looked up, a name is kept.

    The library's recovery operations find a protection by the name its
    state records (the source may be gone), so a name is never looked up.
    """
    if _MOREF.match(vm):
        return get_vm(conn, VMSelector(moref=vm)).name
    return vm


def duration(module: AnsibleModule, name: str) -> timedelta | None:
    """The option `name` as a duration ("90s", "15m", "1h30m", "7d"), or None when not given.

    A bad value is the library's InvalidInput, its message prefixed with the option's name.
    """
    value = module.params.get(name)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc}") from exc


def plain(value: Any) -> Any:
    """A library result as JSON-ready data: dataclasses as dicts, datetimes in ISO 8601, durations in
    seconds."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def error_fields(exc: BaseException) -> dict[str, Any]:
    """`error` (the class name) and the error's own fields (`vm`, `fault`, `task`, ...), as plain data."""
    fields = {k: plain(v) for k, v in vars(exc).items() if not k.startswith("_") and k not in _RESERVED}
    return {"error": type(exc).__name__, **fields}


def run(module: AnsibleModule, action: Callable[[Connection], dict[str, Any]]) -> None:
    """Connect, call `action`, exit with what it returns; a ReplicatorError fails the task with its fields.

    Any other exception is a bug: Ansible shows its traceback as it is.
    """
    require_library(module)
    try:
        with connection(module) as conn:
            result = action(conn)
    except ReplicatorError as exc:
        module.fail_json(msg=str(exc), **error_fields(exc))
    module.exit_json(**result)
