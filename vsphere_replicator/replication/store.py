"""Where the state lives: option keys on the replica, one read per VM, and writes under the lease.

Options, all under `vsphere_replicator.`: `state` is the committed state;
`journal` the cycle in flight; `recovery` a failover or failback in flight;
`seed` marks a replica whose seed is unfinished; `source` is the source's
instance UUID on its own, so a replica whose state is damaged is still known
as that source's; `lease` is who may change the replica now (lease.py). A
cycle commits by writing the new state and clearing the journal in one
compare-and-swap reconfigure, so any machine can read where a replication
stands and carry on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import StateError
from vsphere_replicator.inventory import vm_options
from vsphere_replicator.replication.codec import (
    decode_journal,
    decode_recovery,
    decode_seed,
    decode_state,
    encode_journal,
    encode_recovery,
    encode_seed,
    encode_state,
)
from vsphere_replicator.replication.lease import LEASE_KEY, Lease, LeaseHolder
from vsphere_replicator.replication.options import PREFIX, VMOptions
from vsphere_replicator.replication.state import Journal, RecoveryJournal, ReplicaState, SeedRecord

STATE_KEY = PREFIX + "state"
JOURNAL_KEY = PREFIX + "journal"
SEED_KEY = PREFIX + "seed"
SOURCE_KEY = PREFIX + "source"
RECOVERY_KEY = PREFIX + "recovery"  # a failover or failback in flight on this replica
TEST_KEY = PREFIX + "test_failover_of"  # on a test-failover copy: whose, and which restore point
CLONE_KEY = PREFIX + "clone_of"  # on a periodic clone made by the clone policy


def seed_options(record: SeedRecord) -> dict[str, str]:
    """The options a seed clone is born with, so a crash mid-seed leaves a recognisable replica."""
    return {SEED_KEY: encode_seed(record), SOURCE_KEY: record.source.instance_uuid}


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """A VM carrying replication options, with what they say.

    `error` is set (and the parts it concerns are None) when the options
    cannot be read; `source_uuid` still says whose replica it is when known.
    """

    moref: str
    state: ReplicaState | None
    journal: Journal | None
    seed: SeedRecord | None
    source_uuid: str | None = None
    error: StateError | None = None
    recovery: RecoveryJournal | None = None
    holder: LeaseHolder | None = None


def replica_record(moref: str, options: Mapping[str, str], vm: str | None = None) -> ReplicaRecord:
    """What one VM's options say; a damaged option is recorded in `error`, never raised."""
    state = journal = seed = recovery = None
    error: StateError | None = None
    try:
        seed = decode_seed(options[SEED_KEY], vm) if SEED_KEY in options else None
        state = decode_state(options[STATE_KEY], vm) if STATE_KEY in options else None
        journal = decode_journal(options[JOURNAL_KEY], vm) if JOURNAL_KEY in options else None
        recovery = decode_recovery(options[RECOVERY_KEY], vm) if RECOVERY_KEY in options else None
    except StateError as exc:
        error = exc
    uuid = options.get(SOURCE_KEY) or (
        state.source.instance_uuid if state else seed.source.instance_uuid if seed else None
    )
    return ReplicaRecord(
        moref=moref,
        state=state,
        journal=journal,
        seed=seed,
        source_uuid=uuid,
        error=error,
        recovery=recovery,
        holder=LeaseHolder.decode(options.get(LEASE_KEY)),
    )


def is_replica_options(options: Mapping[str, str]) -> bool:
    """Options that make a VM a replica (our other marks — periodic clones, a lease — do not)."""
    return any(key in options for key in (STATE_KEY, SEED_KEY))


def find_replicas(conn: Connection) -> tuple[ReplicaRecord, ...]:
    """Every VM that carries replication options, in one inventory read."""
    return tuple(
        replica_record(moref, options)
        for moref, options in vm_options(conn, PREFIX).items()
        if is_replica_options({k: v for k, v in options.items() if v})
    )


def record_from(options: VMOptions, vm: str | None = None) -> ReplicaRecord:
    return replica_record(options.moref, options.values, vm)


def cleared_options() -> dict[str, str]:
    """Options that, applied to a copy of a replica, strip every replication key from it."""
    return dict.fromkeys((STATE_KEY, JOURNAL_KEY, SEED_KEY, SOURCE_KEY, LEASE_KEY, RECOVERY_KEY), "")


def write_options(
    lease: Lease,
    *,
    state: ReplicaState | None = None,
    journal: Journal | None = None,
    clear_journal: bool = False,
    clear_seed: bool = False,
    recovery: RecoveryJournal | None = None,
    clear_recovery: bool = False,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write state and/or journal (and `extra` raw options) in one reconfigure, under `lease`.

    Atomic at vCenter, and a compare-and-swap: it happens only if nobody
    changed the replica's configuration since we read it and the lease is
    still ours (LeaseLost otherwise).
    """
    changes = dict(extra or {})
    if state is not None:
        changes[STATE_KEY] = encode_state(state)
        changes[SOURCE_KEY] = state.source.instance_uuid
    if journal is not None:
        changes[JOURNAL_KEY] = encode_journal(journal)
    elif clear_journal:
        changes[JOURNAL_KEY] = ""
    if clear_seed:
        changes[SEED_KEY] = ""
    if recovery is not None:
        changes[RECOVERY_KEY] = encode_recovery(recovery)
    elif clear_recovery:
        changes[RECOVERY_KEY] = ""
    if changes:
        lease.write(changes)
