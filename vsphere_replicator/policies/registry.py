"""Find policies through the entry-point group `vsphere_replicator.policies`.

Built-in policies are registered in the library's own metadata, exactly as
a third-party package registers its own, so there is one way in. Nothing is
cached: a package installed while the process runs is seen on the next call.
A plugin that cannot be imported or is not a policy is an error that names
its entry point and distribution — never silently dropped.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from vsphere_replicator.errors import PolicyError, PolicyPluginError
from vsphere_replicator.policies.base import Policy

__all__ = ["GROUP", "available_policies", "get_policy", "policy_names"]

GROUP = "vsphere_replicator.policies"
_METHODS = ("parse", "next_due", "run")


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"policy plugin {ep.name!r} ({ep.value} from {where})"


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise PolicyPluginError(
                f"two plugins claim the policy name {ep.name!r}: {_origin(other)} and {_origin(ep)}; "
                "uninstall one",
                plugin=ep.name,
            )
        found[ep.name] = ep
    return found


def _load(ep: EntryPoint) -> type:
    try:
        obj: Any = ep.load()
    except Exception as exc:
        raise PolicyPluginError(
            f"{_origin(ep)} failed to import: {type(exc).__name__}: {exc}", plugin=ep.name
        ) from exc
    if not isinstance(obj, type):
        raise PolicyPluginError(
            f"{_origin(ep)} must name a policy class, not a {type(obj).__name__}", plugin=ep.name
        )
    missing = [m for m in _METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise PolicyPluginError(
            f"{_origin(ep)} is not a policy: {obj.__qualname__} lacks {', '.join(missing)}", plugin=ep.name
        )
    return obj


def policy_names() -> list[str]:
    """Names of the installed policies, sorted, read from metadata without importing any plugin."""
    return sorted(_entry_points())


def available_policies() -> dict[str, type]:
    """Every installed policy class by name; raise PolicyPluginError naming every broken plugin."""
    loaded: dict[str, type] = {}
    broken: list[PolicyPluginError] = []
    for name, ep in sorted(_entry_points().items()):
        try:
            loaded[name] = _load(ep)
        except PolicyPluginError as exc:
            broken.append(exc)
    if broken:
        raise PolicyPluginError("; ".join(str(e) for e in broken), plugin=broken[0].plugin)
    return loaded


def get_policy(name: str) -> Policy[Any]:
    """A fresh instance of the policy called `name`; only that plugin is imported.

    Raises PolicyError listing the known names when there is no such policy,
    and PolicyPluginError when that plugin is broken.
    """
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "none installed"
        raise PolicyError(f"unknown policy {name!r}; known policies: {known}")
    cls = _load(ep)
    try:
        policy = cls()
    except Exception as exc:
        raise PolicyPluginError(
            f"{_origin(ep)} could not be created: {type(exc).__name__}: {exc}", plugin=name
        ) from exc
    if not isinstance(policy, Policy):
        raise PolicyPluginError(
            f"{_origin(ep)} is not a policy: its instances lack parse/next_due/run", plugin=name
        )
    return policy
