"""Policy files: which VMs are protected, where their replicas go, and by which policy.

A file is checked completely before anything runs, and every problem is
reported at once, each located as `file:LINE:COL: reason` (1-based), so an
operator fixes the file in one pass. PyYAML's node tree (`yaml.compose`)
keeps the marks a plain `safe_load` throws away, and shows duplicate keys
that a dict would silently collapse. Format (version 1)::

    version: 1
    limits:                      # optional; defaults shown
      total: 4                   # cycles running at once, in all
      per_host: 2                # ... on one source host
      per_datastore: 2           # ... touching one source datastore
      bandwidth: 100MiB/s        # optional cap over all transfers
    protections:
      - name: web                # unique
        select:                  # at least one criterion; all given must match
          names: ["web-*"]       # fnmatch globs
          folders: ["DC0/vm/web"]
          tags: ["tier:gold"]    # category:tag
        target:
          datastore: secondary-ds        # required
          host: null                     # optional, as resource_pool and folder
          provisioning: thin             # thin, thick-lazy, thick-eager
          name: "{vm}-replica"
          networks: {"VM Network": "DR Network"}
          recovery_ip:                   # optional: re-addressed at failover (guest customization)
            nics: ["10.20.0.15/24,gateway=10.20.0.1", dhcp]   # per NIC, in order
            dns: [10.20.0.2]
        policy: point-in-time            # a registered policy
        settings: {interval: 15m, keep: 12, quiesce: try}
    plans:                         # optional: recovery plans over the protected VMs
      - name: erp                  # unique
        consistency_group: true    # replicate --plan takes the VMs' snapshots in one window
        wait: tools                # between tiers: tools (VMware Tools running) or a delay (30s)
        tiers:                     # tier 1 comes up first; each VM in one tier of one plan
          - [db-01]
          - [app-01, app-02]
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from string import Formatter
from typing import Any, Literal

import yaml
from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from vsphere_replicator.checks import check_int, shown
from vsphere_replicator.customize import NicAddress, RecoveryIp
from vsphere_replicator.errors import InvalidInput, PolicyError
from vsphere_replicator.inventory import PROVISIONING
from vsphere_replicator.policies.base import Policy, Selection
from vsphere_replicator.policies.registry import get_policy
from vsphere_replicator.replication.settings import PlanMembership, ReplicaTarget
from vsphere_replicator.units import MAX_SIZE, parse_duration, parse_rate

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_DEPTH",
    "MAX_FILE_SIZE",
    "MAX_NODES",
    "VERSION",
    "Limits",
    "Located",
    "PolicyFile",
    "PolicyFileError",
    "Protection",
    "Selection",
    "load_policy_file",
    "parse_policy_file",
]

VERSION = 1
MAX_CONCURRENCY = 64  # threads, and load on vCenter: a larger limit is more likely a typo than a plan
# What a policy file may be: a few hundred protections fit in far less. Beyond these, YAML's
# recursion (deep nesting) and aliases (a few lines that stand for billions of nodes) are attacks
# on the reader, not policies.
MAX_FILE_SIZE = 1 << 20  # bytes, and characters for parse_policy_file
MAX_DEPTH = 32  # levels of nesting
MAX_NODES = 100_000  # nodes, every alias counted as the whole tree it repeats

_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True, slots=True)
class Located:
    """One problem in a policy file; `line` and `column` are 1-based, 0 when it concerns the whole file."""

    file: str
    line: int
    column: int
    reason: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}:{self.column}: {self.reason}"


class PolicyFileError(PolicyError):
    """A policy file is invalid; `.errors` holds every problem found, in file order. Nothing ran."""

    def __init__(self, errors: Sequence[Located]) -> None:
        self.errors = tuple(sorted(errors, key=lambda e: (e.line, e.column)))
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass(frozen=True, slots=True)
class Limits:
    """How many cycles may run at once (in all, per source host, per source datastore) and the bandwidth cap.

    `bandwidth` is bytes per second over every transfer together, None for no cap.
    """

    total: int = 4
    per_host: int = 2
    per_datastore: int = 2
    bandwidth: int | None = None

    def __post_init__(self) -> None:
        for name in ("total", "per_host", "per_datastore"):
            check_int(getattr(self, name), f"limits.{name}", 1, MAX_CONCURRENCY)
        if self.bandwidth is not None:
            check_int(self.bandwidth, "limits.bandwidth", 1, MAX_SIZE, unit="bytes per second")


@dataclass(frozen=True, slots=True)
class Protection:
    """One protection: the VMs it selects, their replica target, and the policy with its parsed settings."""

    name: str
    selection: Selection
    target: ReplicaTarget
    policy: str
    settings: object


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """A validated policy file."""

    path: str
    limits: Limits
    protections: tuple[Protection, ...]
    plans: tuple[tuple[str, tuple[tuple[str, ...], ...], PlanMembership], ...] = ()  # (name, tiers, options)

    def target_for(self, protection: Protection, vm: str) -> ReplicaTarget:
        """The protection's target for `vm`, with its place in a recovery plan if a plan names it."""
        for _, tiers, options in self.plans:
            for number, tier in enumerate(tiers, start=1):
                if vm in tier:
                    return replace(protection.target, plan=replace(options, tier=number))
        return protection.target


def _read_bounded(name: str) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_SIZE; a device, pipe or larger file is refused.

    Opened without blocking, so a FIFO with no writer is refused rather than waited on.
    """
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PolicyFileError([Located(name, 0, 0, "not a regular file: a policy file is a YAML file")])
        data = handle.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise PolicyFileError([Located(name, 0, 0, "larger than 1 MiB: not a policy file")])
    return data


def load_policy_file(path: str | os.PathLike[str]) -> PolicyFile:
    """Read and validate the policy file at `path`; raise PolicyFileError listing every problem.

    The file must be a regular file of at most 1 MiB (MAX_FILE_SIZE), UTF-8.
    """
    name = os.fspath(path)
    try:
        data = _read_bounded(name)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyFileError([Located(name, 0, 0, f"cannot read the policy file: {reason}")]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        reason = f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
        raise PolicyFileError([Located(name, line, column, reason)]) from exc
    return parse_policy_file(text, name)


class _Refused(ComposerError):
    """A document beyond MAX_DEPTH or MAX_NODES, stopped where it crossed the line."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a bound on nesting and on nodes once aliases are expanded.

    Composing recurses once per level (5000 levels are a RecursionError), and
    an alias makes its whole anchored tree appear again (the "billion laughs":
    nine lines that stand for a billion nodes): both are counted as composed.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._weight: dict[int, int] = {}  # id(anchored node) -> nodes it stands for

    def _add(self, count: int, mark: Any) -> None:
        self._nodes += count
        if self._nodes > MAX_NODES:
            raise _Refused(None, None, f"more than {MAX_NODES} values once aliases are expanded", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
        if self.check_event(AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._weight:
                raise _Refused(None, None, "an alias refers to a node that contains it", mark)
            self._add(self._weight[id(node)], mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        before = self._nodes
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._add(1, mark)
        self._weight[id(node)] = self._nodes - before
        return node


def parse_policy_file(text: str, path: str = "<string>") -> PolicyFile:
    """Validate policy-file `text`; `path` only names it in errors. Raise PolicyFileError.

    Text beyond 1 MiB, nesting beyond MAX_DEPTH levels and aliases that
    expand beyond MAX_NODES values are refused, located where they start.
    """
    if not isinstance(text, str):
        raise PolicyFileError(
            [Located(path, 0, 0, f"the policy text must be a str, not {type(text).__name__}")]
        )
    if len(text) > MAX_FILE_SIZE:
        raise PolicyFileError([Located(path, 0, 0, "larger than 1 MiB: not a policy file")])
    checker = _Checker(path)
    try:
        root = yaml.compose(text, Loader=_BoundedLoader)
    except _Refused as exc:
        mark = exc.problem_mark
        reason = f"refused: {exc.problem}"
        raise PolicyFileError(
            [Located(path, mark.line + 1, mark.column + 1, reason) if mark else Located(path, 0, 0, reason)]
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"invalid YAML: {exc.problem or exc.context}"
        raise PolicyFileError(
            [Located(path, mark.line + 1, mark.column + 1, reason) if mark else Located(path, 0, 0, reason)]
        ) from exc
    except yaml.YAMLError as exc:
        raise PolicyFileError([Located(path, 0, 0, f"invalid YAML: {exc}")]) from exc
    if root is None:
        raise PolicyFileError(
            [Located(path, 0, 0, "the policy file is empty: expected version and protections")]
        )
    result = checker.policy_file(root)
    if checker.errors or result is None:
        raise PolicyFileError(checker.errors)
    return result


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return repr(node.value)


@dataclass
class _Checker:
    """Walks the node tree, recording located problems instead of stopping at the first."""

    file: str
    errors: list[Located] = field(default_factory=list)
    _policies: dict[str, Policy[Any] | str] = field(default_factory=dict)

    def error(self, node: Node, reason: str) -> None:
        mark = node.start_mark
        self.errors.append(Located(self.file, mark.line + 1, mark.column + 1, reason))

    # -- shapes -----------------------------------------------------------------------------------------

    def mapping(
        self, node: Node, what: str, *, required: Sequence[str] = (), optional: Sequence[str] | None = ()
    ) -> dict[str, tuple[Node, Node]] | None:
        """The mapping's keys and value nodes; `optional=None` accepts any key (for settings)."""
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping, not {_kind(node)}")
            return None
        entries: dict[str, tuple[Node, Node]] = {}
        allowed = None if optional is None else [*required, *optional]
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str"):
                self.error(key_node, f"keys in {what} must be strings, not {_kind(key_node)}")
                continue
            key = key_node.value
            if key in entries:
                first = entries[key][0].start_mark
                self.error(key_node, f"duplicate key {key!r} in {what} (first at line {first.line + 1})")
                continue
            if allowed is not None and key not in allowed:
                self.error(key_node, f"unknown key {key!r} in {what}; expected one of: {', '.join(allowed)}")
                continue
            entries[key] = (key_node, value_node)
        for key in required:
            if key not in entries:
                self.error(node, f"{what} is missing the required key {key!r}")
        return entries

    def is_null(self, node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == _TAG + "null"

    def string(self, node: Node, what: str, *, nullable: bool = False) -> str | None:
        if nullable and self.is_null(node):
            return None
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "str") or not node.value:
            self.error(node, f"{what} must be a non-empty string, not {_kind(node)}")
            return None
        return str(node.value)

    def integer(self, node: Node, what: str, low: int, high: int) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "int"):
            self.error(node, f"{what} must be a whole number, not {_kind(node)}")
            return None
        value = self.plain(node)
        if not isinstance(value, int) or not low <= value <= high:
            self.error(node, f"{what} must be between {low} and {high}, not {node.value}")
            return None
        return value

    def strings(self, node: Node, what: str) -> tuple[str, ...]:
        if self.is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what} must be a list of strings, not {_kind(node)}")
            return ()
        items = (self.string(item, f"each entry of {what}") for item in node.value)
        return tuple(item for item in items if item is not None)

    def plain(self, node: Node) -> Any:
        """The Python value of `node`, built by PyYAML's safe constructor."""
        try:
            return SafeConstructor().construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.error(node, f"invalid value: {exc.problem}")
            return None
        except (ValueError, OverflowError) as exc:  # an int of thousands of digits, a date like 2024-13-45
            kind = node.tag.rsplit(":", 1)[-1]
            self.error(
                node, f"invalid value: {shown(node.value)} is not a usable {kind} ({type(exc).__name__})"
            )
            return None

    # -- sections -------------------------------------------------------------------------------------------

    def policy_file(self, root: Node) -> PolicyFile | None:
        top = self.mapping(
            root, "the policy file", required=("version", "protections"), optional=("limits", "plans")
        )
        if top is None:
            return None
        if "version" in top:
            node = top["version"][1]
            if not (
                isinstance(node, ScalarNode) and node.tag == _TAG + "int" and self.plain(node) == VERSION
            ):
                shown = node.value if isinstance(node, ScalarNode) else _kind(node)
                self.error(node, f"unsupported version {shown}; this library reads version {VERSION} only")
        limits = self.limits(top["limits"][1]) if "limits" in top else Limits()
        protections: list[Protection] = []
        if "protections" in top:
            node = top["protections"][1]
            if not isinstance(node, SequenceNode):
                self.error(node, f"protections must be a list, not {_kind(node)}")
            elif not node.value:
                self.error(node, "protections is empty: list at least one protection")
            else:
                seen: dict[str, Node] = {}
                for item in node.value:
                    protection = self.protection(item, seen)
                    if protection is not None:
                        protections.append(protection)
        plans = self.plans(top["plans"][1]) if "plans" in top else ()
        if self.errors or limits is None or plans is None:
            return None
        return PolicyFile(path=self.file, limits=limits, protections=tuple(protections), plans=plans)

    def plans(self, node: Node) -> tuple[tuple[str, tuple[tuple[str, ...], ...], PlanMembership], ...] | None:
        if self.is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            self.error(node, f"plans must be a list, not {_kind(node)}")
            return None
        before = len(self.errors)
        found: list[tuple[str, tuple[tuple[str, ...], ...], PlanMembership]] = []
        placed: dict[str, str] = {}  # VM -> the plan it is in
        for item in node.value:
            entries = self.mapping(
                item, "a recovery plan", required=("name", "tiers"), optional=("consistency_group", "wait")
            )
            if entries is None:
                continue
            name = self.string(entries["name"][1], "a recovery plan's name") if "name" in entries else None
            if name is not None and any(name == other for other, _, _ in found):
                self.error(entries["name"][1], f"duplicate recovery plan name {name!r}")
            consistent = False
            if "consistency_group" in entries:
                flag = entries["consistency_group"][1]
                consistent = self.plain(flag)
                if not isinstance(consistent, bool):
                    self.error(flag, f"plan.consistency_group must be true or false, not {flag.value!r}")
            wait: Literal["tools", "delay"] = "tools"
            delay = 0.0
            if "wait" in entries:
                raw = self.plain(entries["wait"][1])
                if raw != "tools":
                    try:
                        delay, wait = parse_duration(str(raw)).total_seconds(), "delay"
                    except InvalidInput as exc:
                        self.error(entries["wait"][1], f"plan.wait is tools or a delay like 30s: {exc}")
            tiers: list[tuple[str, ...]] = []
            tiers_node = entries["tiers"][1] if "tiers" in entries else None
            if tiers_node is not None and (not isinstance(tiers_node, SequenceNode) or not tiers_node.value):
                self.error(tiers_node, "plan.tiers is a non-empty list of lists of VM names")
            elif tiers_node is not None:
                for tier_node in tiers_node.value:
                    tier = self.strings(tier_node, "a tier of VM names")
                    for vm in tier:
                        if vm in placed:
                            self.error(
                                tier_node, f"{vm} is already in plan {placed[vm]!r}: one tier of one plan"
                            )
                        placed[vm] = name or "?"
                    tiers.append(tier)
            if name is None or len(self.errors) > before:
                continue
            try:
                options = PlanMembership(
                    name=name, consistency_group=consistent, wait=wait, delay_seconds=delay
                )
            except InvalidInput as exc:
                self.error(item, f"recovery plan {name!r}: {exc}")
                continue
            found.append((name, tuple(tiers), options))
        if len(self.errors) > before:
            return None
        return tuple(found)

    def limits(self, node: Node) -> Limits | None:
        if self.is_null(node):
            return Limits()
        before = len(self.errors)
        entries = self.mapping(node, "limits", optional=("total", "per_host", "per_datastore", "bandwidth"))
        if entries is None:
            return None
        values: dict[str, Any] = {}
        for key in ("total", "per_host", "per_datastore"):
            if key in entries:
                values[key] = self.integer(entries[key][1], f"limits.{key}", 1, MAX_CONCURRENCY)
        if "bandwidth" in entries and not self.is_null(bandwidth := entries["bandwidth"][1]):
            try:
                values["bandwidth"] = parse_rate(self.plain(bandwidth))
            except InvalidInput as exc:
                self.error(bandwidth, f"limits.bandwidth: {exc}")
        if len(self.errors) > before:
            return None
        return Limits(**values)

    def protection(self, node: Node, seen: dict[str, Node]) -> Protection | None:
        entries = self.mapping(
            node, "a protection", required=("name", "select", "target", "policy"), optional=("settings",)
        )
        if entries is None:
            return None
        name = self.string(entries["name"][1], "a protection's name") if "name" in entries else None
        label = f"protection {name!r}" if name else "a protection"
        if name is not None:
            if name in seen:
                first = seen[name].start_mark.line + 1
                self.error(entries["name"][1], f"duplicate protection name {name!r} (first at line {first})")
            else:
                seen[name] = entries["name"][1]
        selection = self.selection(entries["select"][1], label) if "select" in entries else None
        target = self.target(entries["target"][1], label) if "target" in entries else None
        policy_name, settings = None, None
        if "policy" in entries:
            policy_name = self.string(entries["policy"][1], f"the policy of {label}")
            policy = self.policy(entries["policy"][1], policy_name)
            settings_node = entries["settings"][1] if "settings" in entries else None
            if policy is not None:
                settings = self.settings(policy, policy_name or "", settings_node, node, label)
        if name is None or selection is None or target is None or policy_name is None or settings is None:
            return None
        return Protection(
            name=name, selection=selection, target=target, policy=policy_name, settings=settings
        )

    def selection(self, node: Node, label: str) -> Selection | None:
        entries = self.mapping(node, f"the selection of {label}", optional=("names", "folders", "tags"))
        if entries is None:
            return None
        names = self.strings(entries["names"][1], "select.names") if "names" in entries else ()
        folders = self.strings(entries["folders"][1], "select.folders") if "folders" in entries else ()
        tags: list[str] = []
        if "tags" in entries and not self.is_null(tags_node := entries["tags"][1]):
            if not isinstance(tags_node, SequenceNode):
                self.error(tags_node, f"select.tags must be a list of strings, not {_kind(tags_node)}")
            else:
                for item in tags_node.value:
                    tag = self.string(item, "each entry of select.tags")
                    category, sep, value = (tag or "").partition(":")
                    if tag is not None and not (sep and category.strip() and value.strip()):
                        self.error(item, f"a tag must be written category:tag, not {tag!r}")
                    if tag is not None:
                        tags.append(tag)
        if not (names or folders or tags):
            self.error(node, f"the selection of {label} is empty: give names, folders or tags")
            return None
        return Selection(names=names, folders=tuple(f.rstrip("/") for f in folders), tags=tuple(tags))

    def target(self, node: Node, label: str) -> ReplicaTarget | None:
        what = f"the target of {label}"
        before = len(self.errors)
        entries = self.mapping(
            node,
            what,
            required=("datastore",),
            optional=("host", "resource_pool", "folder", "provisioning", "name", "networks", "recovery_ip"),
        )
        if entries is None:
            return None
        values: dict[str, Any] = {}
        for key in ("datastore", "host", "resource_pool", "folder"):
            if key in entries:
                values[key] = self.string(entries[key][1], f"target.{key}", nullable=key != "datastore")
        if "provisioning" in entries:
            provisioning = self.string(entries["provisioning"][1], "target.provisioning")
            if provisioning is not None and provisioning not in PROVISIONING:
                self.error(
                    entries["provisioning"][1],
                    f"target.provisioning must be one of {', '.join(PROVISIONING)}, not {provisioning!r}",
                )
            values["provisioning"] = provisioning
        if "name" in entries:
            values["name"] = self.replica_name(entries["name"][1])
        if "networks" in entries:
            values["networks"] = self.networks(entries["networks"][1])
        if "recovery_ip" in entries and not self.is_null(entries["recovery_ip"][1]):
            values["recovery_ip"] = self.recovery_ip(entries["recovery_ip"][1])
        if len(self.errors) > before:
            return None
        try:
            return ReplicaTarget(**values)
        except InvalidInput as exc:  # the checks above mirror these; this keeps the two from drifting apart
            self.error(node, f"{what}: {exc}")
            return None

    def recovery_ip(self, node: Node) -> RecoveryIp | None:
        entries = self.mapping(node, "target.recovery_ip", optional=("nics", "dns", "domain"))
        if entries is None:
            return None
        try:
            nics = tuple(
                NicAddress.parse(text)
                for text in (
                    self.strings(entries["nics"][1], "recovery_ip.nics") if "nics" in entries else ()
                )
            )
            dns = self.strings(entries["dns"][1], "recovery_ip.dns") if "dns" in entries else ()
            domain = self.string(entries["domain"][1], "recovery_ip.domain") if "domain" in entries else None
            return RecoveryIp(nics=nics, dns=dns, **({"domain": domain} if domain else {}))
        except InvalidInput as exc:
            self.error(node, f"target.recovery_ip: {exc}")
            return None

    def replica_name(self, node: Node) -> str | None:
        template = self.string(node, "target.name")
        if template is None:
            return None
        try:
            fields = {f for _, f, _, _ in Formatter().parse(template) if f is not None}
        except ValueError as exc:
            self.error(node, f"target.name {template!r} is not a valid template: {exc}")
            return None
        if fields != {"vm"}:
            self.error(node, f"target.name {template!r} must contain {{vm}} and no other field")
            return None
        return template

    def networks(self, node: Node) -> tuple[tuple[str, str], ...] | None:
        if self.is_null(node):
            return ()
        entries = self.mapping(node, "target.networks", optional=None)
        if entries is None:
            return None
        pairs = [
            (key, self.string(value, f"the port group that {key!r} maps to"))
            for key, (_, value) in entries.items()
        ]
        if any(dest is None for _, dest in pairs):
            return None
        return tuple((source, dest) for source, dest in pairs if dest is not None)

    def policy(self, node: Node, name: str | None) -> Policy[Any] | None:
        """The registered policy `name`; an unknown or broken one is reported at every use."""
        if name is None:
            return None
        if name not in self._policies:
            try:
                self._policies[name] = get_policy(name)
            except PolicyError as exc:  # unknown name, or a broken plugin (PolicyPluginError)
                self._policies[name] = str(exc)
        policy = self._policies[name]
        if isinstance(policy, str):
            self.error(node, policy)
            return None
        return policy

    def settings(
        self, policy: Policy[Any], name: str, node: Node | None, protection: Node, label: str
    ) -> object | None:
        entries: dict[str, tuple[Node, Node]] = {}
        raw: dict[str, Any] = {}
        if node is not None and not self.is_null(node):
            before = len(self.errors)
            found = self.mapping(node, f"the settings of {label}", optional=None)
            if found is None or len(self.errors) > before:
                return None
            entries = found
            raw = {key: self.plain(value) for key, (_, value) in entries.items()}
        try:
            settings: object = policy.parse(raw)
            return settings
        except PolicyError as exc:
            for key, reason in exc.problems:
                where = entries[key][1] if key in entries else (node if node is not None else protection)
                self.error(where, f"{name}: {reason}")
        except Exception as exc:  # a plugin's bug: report it where its settings are, and carry on checking
            self.error(
                node if node is not None else protection, f"{name} failed to read its settings: {exc!r}"
            )
        return None
