"""Recovery IP settings: what an operator may write, and what is refused before anything changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.test_notebook_reprs import replica_state
from vsphere_replicator.customize import NicAddress, RecoveryIp
from vsphere_replicator.errors import InvalidInput, StateError
from vsphere_replicator.replication import ReplicaTarget
from vsphere_replicator.replication.codec import decode_state, encode_state


def test_a_static_address_with_its_gateway_and_dhcp_parse_and_print_back() -> None:
    static = NicAddress.parse("10.20.0.15/24,gateway=10.20.0.1")
    assert static == NicAddress(address="10.20.0.15", prefix=24, gateway="10.20.0.1")
    assert static.describe() == "10.20.0.15/24,gateway=10.20.0.1"
    assert NicAddress.parse("DHCP") == NicAddress() and NicAddress().describe() == "dhcp"
    assert NicAddress.parse("192.168.7.9/16").gateway is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.20.0.15", "ADDRESS/PREFIX"),
        ("10.20.0.300/24", "not an IPv4 address"),
        ("10.20.0.15/33", "prefix length from 1 to 32"),
        ("10.20.0.15/24,gateway=10.21.0.1", "not in 10.20.0.0/24"),
        ("10.20.0.15/24,gw=10.20.0.1", "only gateway="),
        ("fe80::1/64", "not an IPv4 address"),
    ],
)
def test_a_bad_recovery_nic_is_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        NicAddress.parse(text)


def test_dhcp_takes_no_prefix_and_dns_servers_are_addresses() -> None:
    with pytest.raises(InvalidInput, match="DHCP NIC takes no prefix"):
        NicAddress(prefix=24)
    with pytest.raises(InvalidInput, match="DNS server"):
        RecoveryIp(dns=("dns.example.com",))
    with pytest.raises(InvalidInput, match="recovery_ip"):
        ReplicaTarget(datastore="dr-ds", recovery_ip="10.0.0.1/24")  # type: ignore[arg-type]


def test_the_recovery_ip_is_kept_in_the_replicas_state() -> None:
    """It lives with the replica on the recovery site: failover needs nothing from the source's."""
    ip = RecoveryIp(
        nics=(NicAddress.parse("10.20.0.15/24,gateway=10.20.0.1"), NicAddress()), dns=("10.20.0.2",)
    )
    state = replace(replica_state("db-01"), target=ReplicaTarget(datastore="dr-ds", recovery_ip=ip))
    assert decode_state(encode_state(state), "db-01").target.recovery_ip == ip
    text = encode_state(state).replace('"domain"', '"domian"')  # a key we never write is damage
    with pytest.raises(StateError, match="domian"):
        decode_state(text, "db-01")
