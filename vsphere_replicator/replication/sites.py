"""The two vCenters of a protection: the source site's and the recovery (target) site's.

vSphere Replication with SRM, Veeam and Zerto replicate into a vCenter at
the recovery site and recover from it alone: the replica, its state, its
journal, its lease and its restore points live on the target site, so that
failover, test failover, status and restore points need only the target
vCenter when the source site is lost. One vCenter for both is the simple
case: `Sites.one(conn)`, and every function that takes a `Connection` takes
it that way.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsphere_replicator.checks import check_type
from vsphere_replicator.connection import Connection


@dataclass(frozen=True, slots=True)
class Sites:
    """Where the protected VMs run (`source`) and where their replicas live (`target`)."""

    source: Connection
    target: Connection

    def __post_init__(self) -> None:
        check_type(self.source, Connection, "Sites.source")
        check_type(self.target, Connection, "Sites.target")

    @classmethod
    def one(cls, conn: Connection) -> Sites:
        return cls(source=conn, target=conn)

    @property
    def single(self) -> bool:
        """Both sites are one vCenter: replicas can be cloned from their sources there."""
        return self.source is self.target


def sites_of(conn: Connection | Sites) -> Sites:
    """`conn` as a pair of sites: a single connection serves as both."""
    if isinstance(conn, Sites):
        return conn
    check_type(conn, Connection, "conn")
    return Sites.one(conn)
