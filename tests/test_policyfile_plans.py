"""Recovery plans and recovery IP settings in a policy file: parsed into what each replica records."""

from __future__ import annotations

import pytest

from vsphere_replicator.customize import NicAddress, RecoveryIp
from vsphere_replicator.policies.policyfile import PolicyFileError, parse_policy_file
from vsphere_replicator.replication.settings import PlanMembership

FILE = """\
version: 1
protections:
  - name: erp
    select: {names: ["erp-*"]}
    target:
      datastore: dr-ds
      networks: {"VM Network": "DR Network"}
      recovery_ip:
        nics: ["10.20.0.15/24,gateway=10.20.0.1", dhcp]
        dns: [10.20.0.2]
    policy: point-in-time
    settings: {interval: 15m}
plans:
  - name: erp
    consistency_group: true
    wait: tools
    tiers:
      - [erp-db]
      - [erp-app-1, erp-app-2]
  - name: web
    wait: 45s
    tiers: [[web-01]]
"""


def test_a_vm_in_a_plan_gets_its_tier_and_the_plans_options_with_its_target() -> None:
    policy = parse_policy_file(FILE, "p.yaml")
    (protection,) = policy.protections
    assert protection.target.recovery_ip == RecoveryIp(
        nics=(NicAddress(address="10.20.0.15", prefix=24, gateway="10.20.0.1"), NicAddress()),
        dns=("10.20.0.2",),
    )
    app = policy.target_for(protection, "erp-app-2")
    assert app.plan == PlanMembership(name="erp", tier=2, consistency_group=True)
    assert policy.target_for(protection, "erp-db").plan == PlanMembership(
        name="erp", tier=1, consistency_group=True
    )
    assert policy.target_for(protection, "erp-other").plan is None
    assert policy.plans[1][2] == PlanMembership(name="web", wait="delay", delay_seconds=45.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("tiers:\n      - [erp-db]", "tiers:\n      - [erp-db, erp-app-1]"), "already in plan 'erp'"),
        (("wait: 45s", "wait: soon"), "tools or a delay"),
        (("consistency_group: true", "consistency_group: yes please"), "true or false"),
        (("- name: web", "- name: erp"), "duplicate recovery plan name 'erp'"),
        (('"10.20.0.15/24,gateway=10.20.0.1"', '"10.20.0.15/24,gateway=10.99.0.1"'), "not in 10.20.0.0/24"),
        (("dns: [10.20.0.2]", "dns: [ns1]"), "DNS server"),
    ],
)
def test_a_mistake_in_a_plan_or_a_recovery_ip_is_located(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in FILE
    with pytest.raises(PolicyFileError, match=message) as caught:
        parse_policy_file(FILE.replace(old, new, 1), "p.yaml")
    assert all(e.line > 0 for e in caught.value.errors)
