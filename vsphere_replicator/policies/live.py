"""The policies' Engine over a live vCenter: selection, placement, protect, replicate, periodic clones.

The one module of the policy layer that reaches vCenter, through the
library's functions below it (replication, clone, snapshots, inventory);
everything else in `policies` sees only the `Engine` protocol, so policies
and the runner are tested against an in-memory engine.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

from vsphere_replicator.clone import clone_vm, destroy_vm
from vsphere_replicator.connection import Connection
from vsphere_replicator.errors import NotFound
from vsphere_replicator.inventory import VMInfo, VMSelector, find_vms, get_vm, vm_options
from vsphere_replicator.logs import get_logger
from vsphere_replicator.policies.base import Selection
from vsphere_replicator.replication.access import DiskAccess
from vsphere_replicator.replication.cycle import replicate
from vsphere_replicator.replication.replica import all_replicas, find_replica
from vsphere_replicator.replication.seed import protect
from vsphere_replicator.replication.settings import CycleResult, CycleSettings, ReplicaTarget
from vsphere_replicator.replication.store import CLONE_KEY, cleared_options
from vsphere_replicator.snapshots import create_snapshot, remove_snapshot
from vsphere_replicator.transport.throttle import Throttle

__all__ = ["LiveEngine"]


class LiveEngine:
    """Runs policy decisions against vCenter through one connection (safe to share across threads).

    `source_access` also reads new restore points back for `verify` (one
    vCenter: it reaches the replica's disks as well; None: HTTP /folder).
    """

    def __init__(
        self, conn: Connection, *, replica_access: DiskAccess, source_access: DiskAccess | None = None
    ) -> None:
        self.conn = conn
        self.replica_access = replica_access
        self.source_access = source_access
        self._morefs: dict[str, str] = {}  # VM name -> moref as last seen: a hint, checked on every use
        self._morefs_lock = threading.Lock()

    def moref_of(self, vm: str) -> str | None:
        """The moref the VM named `vm` had when this engine last saw it (selection, placement), if any."""
        with self._morefs_lock:
            return self._morefs.get(vm)

    def remember(self, vm: str, moref: str | None) -> None:
        """Take `moref` as a hint for the VM named `vm` (a fleet job carries the caller's)."""
        if moref is not None:
            with self._morefs_lock:
                self._morefs[vm] = moref

    def _forget(self, vm: str, moref: str) -> None:
        get_logger(vm=vm).info("vm_moref_stale", moref=moref, fallback="lookup by name")
        with self._morefs_lock:
            if self._morefs.get(vm) == moref:
                del self._morefs[vm]

    def _vm(self, vm: str) -> VMInfo:
        """The VM named `vm`: by its remembered moref (that VM only), else by name (every VM's name).

        A VM renamed or removed since is looked up by name again, so the
        answer is the one `get_vm(conn, vm)` gives.
        """
        moref = self.moref_of(vm)
        if moref is not None:
            found = find_vms(self.conn, VMSelector(moref=moref, name=vm))
            if found:
                return found[0]
            self._forget(vm, moref)
        info = get_vm(self.conn, vm)
        self.remember(vm, info.moref)
        return info

    def _ref(self, vm: str) -> VMSelector | str:
        """What the library's calls take for the VM: its remembered moref and name, else its name."""
        moref = self.moref_of(vm)
        return VMSelector(moref=moref, name=vm) if moref is not None else vm

    def select(self, selection: Selection) -> list[str]:
        """VM names the selection matches; replicas, our clones and templates are never selected."""
        ours = {r.vm.moref for r in all_replicas(self.conn)} | set(vm_options(self.conn, CLONE_KEY))
        tagged: frozenset[str] = frozenset()
        if selection.tags:
            from vsphere_replicator.tags import vms_with_tags  # the Automation SDK loads only when asked

            tagged = vms_with_tags(self.conn, selection.tags)
        chosen = []
        for vm in find_vms(self.conn, VMSelector(glob="*")):
            if vm.moref in ours or vm.template:
                continue
            self.remember(vm.name, vm.moref)
            tags = [t for t in selection.tags if vm.moref in tagged]
            if selection.matches(vm.name, vm.folder, tags):
                chosen.append(vm.name)
        return chosen

    def placement(self, vm: str) -> tuple[str, tuple[str, ...]]:
        info = self._vm(vm)
        return info.host or "", info.datastores

    def is_protected(self, vm: str) -> bool:
        replica = find_replica(self.conn, self._vm(vm))
        return replica is not None and replica.state is not None

    def protect(self, vm: str, target: ReplicaTarget, cycle: CycleSettings) -> CycleResult:
        return protect(
            self.conn,
            vm,
            target,
            settings=cycle,
            replica_access=self.replica_access,
            source_access=self.source_access,
        )

    def replicate(self, vm: str, cycle: CycleSettings, throttle: Throttle | None) -> CycleResult:
        ref = self._ref(vm)
        try:
            return self._replicate(ref, cycle, throttle)
        except NotFound:
            if not isinstance(ref, VMSelector) or ref.moref is None or find_vms(self.conn, ref):
                raise
            self._forget(vm, ref.moref)  # renamed or removed since: as if given by name
            return self._replicate(vm, cycle, throttle)

    def _replicate(
        self, vm: VMSelector | str, cycle: CycleSettings, throttle: Throttle | None
    ) -> CycleResult:
        return replicate(
            self.conn,
            vm,
            replica_access=self.replica_access,
            source_access=self.source_access,
            verify_access=self.source_access,
            settings=cycle,
            throttle=throttle.consume if throttle is not None else None,
        )

    def clone(self, vm: str, target: ReplicaTarget, keep: int, name: str) -> str:
        """A powered-off full clone from a fresh snapshot; clones of `vm` beyond the newest `keep` go."""
        source = self._vm(vm)
        taken = create_snapshot(self.conn, source, f"clone-{name}", description="periodic clone").snapshot
        try:
            placement = target.placement()
            stamp = json.dumps({"source": source.instance_uuid, "created": datetime.now(UTC).isoformat()})
            made = clone_vm(
                self.conn,
                source,
                name,
                placement,
                snapshot=taken,
                options={**cleared_options(), CLONE_KEY: stamp},
            )
        finally:
            remove_snapshot(self.conn, source, taken)
        self._keep_newest(source.instance_uuid or "", keep)
        return made.name

    def _keep_newest(self, source_uuid: str, keep: int) -> None:
        clones = []
        for moref, options in vm_options(self.conn, CLONE_KEY).items():
            record = json.loads(options[CLONE_KEY])
            if record.get("source") == source_uuid:
                clones.append((record["created"], moref))
        for _, moref in sorted(clones)[:-keep]:
            get_logger(operation="clone_retention").info("old_clone_destroyed", moref=moref)
            destroy_vm(self.conn, VMSelector(moref=moref))
