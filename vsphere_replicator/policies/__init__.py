"""The policy plugin layer: policy files, the policies that read them, and the runner that drives the engine.

Policies are plugins found through the entry-point group
`vsphere_replicator.policies`; the built-in `point-in-time`, `continuous`
and `clone` register there like any third-party package would. Nothing here
talks to vCenter: everything goes through the `Engine` protocol.
"""

from vsphere_replicator.policies.base import Engine, Policy, PolicyError, Selection
from vsphere_replicator.policies.builtin import (
    ClonePolicy,
    CloneSettings,
    ContinuousPolicy,
    ContinuousSettings,
    PointInTimePolicy,
    PointInTimeSettings,
    Schedule,
    SettingsReader,
)
from vsphere_replicator.policies.durations import format_duration, parse_duration, parse_rate
from vsphere_replicator.policies.policyfile import (
    Limits,
    Located,
    PolicyFile,
    PolicyFileError,
    Protection,
    load_policy_file,
    parse_policy_file,
)
from vsphere_replicator.policies.registry import (
    PolicyPluginError,
    available_policies,
    get_policy,
    policy_names,
)
from vsphere_replicator.policies.runner import RunRecord, run_policies
from vsphere_replicator.policies.throttle import Throttle

__all__ = [
    "ClonePolicy",
    "CloneSettings",
    "ContinuousPolicy",
    "ContinuousSettings",
    "Engine",
    "Limits",
    "Located",
    "PointInTimePolicy",
    "PointInTimeSettings",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyFileError",
    "PolicyPluginError",
    "Protection",
    "RunRecord",
    "Schedule",
    "Selection",
    "SettingsReader",
    "Throttle",
    "available_policies",
    "format_duration",
    "get_policy",
    "load_policy_file",
    "parse_duration",
    "parse_policy_file",
    "parse_rate",
    "policy_names",
    "run_policies",
]
