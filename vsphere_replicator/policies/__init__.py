"""The policy plugin layer: policy files, the policies that read them, and the runner that drives the engine.

Policies are plugins found through the entry-point group
`vsphere_replicator.policies`; the built-in `point-in-time`, `continuous`
and `clone` register there like any third-party package would. Nothing here
talks to vCenter but `LiveEngine` (live.py): policies and the runner see only
the `Engine` protocol. The layer sits above `replication` and may import it;
nothing below imports this package (tests/test_architecture.py).
"""

from vsphere_replicator.errors import PolicyError, PolicyPluginError
from vsphere_replicator.policies.base import Engine, Policy, Selection
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
from vsphere_replicator.policies.live import LiveEngine
from vsphere_replicator.policies.policyfile import (
    Limits,
    Located,
    PolicyFile,
    PolicyFileError,
    Protection,
    load_policy_file,
    parse_policy_file,
)
from vsphere_replicator.policies.registry import available_policies, get_policy, policy_names
from vsphere_replicator.policies.runner import RunRecord, run_policies
from vsphere_replicator.transport.throttle import Throttle

__all__ = [
    "ClonePolicy",
    "CloneSettings",
    "ContinuousPolicy",
    "ContinuousSettings",
    "Engine",
    "Limits",
    "LiveEngine",
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
    "get_policy",
    "load_policy_file",
    "parse_policy_file",
    "policy_names",
    "run_policies",
]
