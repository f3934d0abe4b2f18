package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const maxSnapshotDepth = 32 // vSphere's limit on a snapshot chain

func findTree(list []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) (*types.VirtualMachineSnapshotTree, int) {
	var walk func([]types.VirtualMachineSnapshotTree, int) (*types.VirtualMachineSnapshotTree, int)
	walk = func(l []types.VirtualMachineSnapshotTree, depth int) (*types.VirtualMachineSnapshotTree, int) {
		for i := range l {
			if l[i].Snapshot == ref {
				return &l[i], depth
			}
			if t, d := walk(l[i].ChildSnapshotList, depth+1); t != nil {
				return t, d
			}
		}
		return nil, 0
	}
	return walk(list, 1)
}

func treeParent(list []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) *types.ManagedObjectReference {
	for i := range list {
		for _, c := range list[i].ChildSnapshotList {
			if c.Snapshot == ref {
				p := list[i].Snapshot
				return &p
			}
		}
		if p := treeParent(list[i].ChildSnapshotList, ref); p != nil {
			return p
		}
	}
	return nil
}

// detachFromTree removes ref, lifting its children to its place.
func detachFromTree(list []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) []types.VirtualMachineSnapshotTree {
	var out []types.VirtualMachineSnapshotTree
	for _, node := range list {
		if node.Snapshot == ref {
			out = append(out, node.ChildSnapshotList...)
			continue
		}
		node.ChildSnapshotList = detachFromTree(node.ChildSnapshotList, ref)
		out = append(out, node)
	}
	return out
}

// postOrder lists a subtree's snapshots, children before parents.
func postOrder(list []types.VirtualMachineSnapshotTree) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for _, node := range list {
		out = append(out, postOrder(node.ChildSnapshotList)...)
		out = append(out, node.Snapshot)
	}
	return out
}

func snapshotRefs(list []types.VirtualMachineSnapshotTree) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for _, n := range list {
		out = append(out, n.Snapshot)
	}
	return out
}

// publishVM pushes the VM's snapshot tree and disks to property collectors.
func publishVM(vm *simulator.VirtualMachine) {
	var snap interface{}
	var roots []types.ManagedObjectReference
	if vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0 {
		info := *vm.Snapshot
		snap = &info
		roots = snapshotRefs(info.RootSnapshotList)
	}
	changes := []types.PropertyChange{
		{Name: "snapshot", Val: snap},
		{Name: "rootSnapshot", Val: roots},
		{Name: "config.hardware.device", Val: vm.Config.Hardware.Device},
		{Name: "config.changeVersion", Val: vm.Config.ChangeVersion},
		{Name: "network", Val: vmNetworks(vm.Config.Hardware.Device)},
	}
	if vm.Guest != nil {
		changes = append(changes, types.PropertyChange{Name: "guest.net", Val: guestNICs(vm)})
	}
	simulator.Map.Update(vm, changes)
}

func (l *lab) activateTracking(vm *simulator.VirtualMachine) {
	enabled := vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	for _, disk := range vmDisks(vm.Config.Hardware.Device) {
		id := diskID{vm.Self.Value, disk.Key}
		if !enabled {
			delete(l.trackers, id)
			diskBacking(disk).ChangeId = ""
			continue
		}
		if l.trackers[id] == nil {
			l.trackers[id] = newTracker(disk.CapacityInBytes, l.cfg.cbtBlock)
		}
	}
}

// stun is what ESXi does to a VM at snapshot create/remove, power on and
// revert: tracking switched on since the last stun starts, and every
// tracked disk opens a new epoch.
func (l *lab) stun(vm *simulator.VirtualMachine) {
	l.activateTracking(vm)
	for _, disk := range vmDisks(vm.Config.Hardware.Device) {
		if t := l.trackers[diskID{vm.Self.Value, disk.Key}]; t != nil {
			t.stun()
			diskBacking(disk).ChangeId = t.changeID()
		}
	}
}

func (l *lab) createSnapshot(vm *simulator.VirtualMachine, req *types.CreateSnapshot_Task) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var result types.AnyType
	var fault *methodFault
	simulator.Map.WithLock(vm, func() {
		result, fault = l.createSnapshotLocked(vm, req)
	})
	return result, fault
}

func (l *lab) createSnapshotLocked(vm *simulator.VirtualMachine, req *types.CreateSnapshot_Task) (types.AnyType, *methodFault) {
	depth := 0
	if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
		_, depth = findTree(vm.Snapshot.RootSnapshotList, *vm.Snapshot.CurrentSnapshot)
	}
	if depth+1 > maxSnapshotDepth {
		return nil, newFault(&types.TooManySnapshotLevels{}, "the snapshot chain of %s already has the maximum %d levels", vm.Name, maxSnapshotDepth)
	}
	if req.Name == "" || len(req.Name) > 255 {
		return nil, newFault(&types.InvalidName{Name: req.Name}, "invalid snapshot name %q", req.Name)
	}
	poweredOn := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
	if fault := l.lockedLayer(currentLayers(vm)); fault != nil {
		return nil, fault // the current layers become the snapshot's, read-only
	}
	if req.Quiesce {
		if fault := l.quiesceFault(vm); fault != nil {
			return nil, fault
		}
	}

	ownVM(vm)
	// Tracking switched on since the last stun starts now, with this snapshot.
	l.activateTracking(vm)
	frozenConfig := deepCopy(*vm.Config)
	home := vmHome(vm)

	type newLayer struct {
		disk    *types.VirtualDisk
		path    string
		backing *types.VirtualDiskFlatVer2BackingInfo
	}
	var layers []newLayer
	rollback := func() {
		for _, nl := range layers {
			removeLayer(nl.path)
		}
	}
	for _, disk := range vmDisks(vm.Config.Hardware.Device) {
		b := diskBacking(disk)
		parent, err := resolveLayer(b.FileName)
		if err != nil {
			rollback()
			return nil, newFault(&types.FileNotFound{FileFault: types.FileFault{File: b.FileName}}, "%v", err)
		}
		deltaPath, err := nextDeltaPath(home, baseDiskName(b.FileName))
		if err != nil {
			rollback()
			return nil, newFault(&types.CannotCreateFile{FileFault: types.FileFault{File: home}}, "%v", err)
		}
		if err := l.newDelta(deltaPath, parent, disk.CapacityInBytes); err != nil {
			rollback()
			return nil, newFault(&types.CannotCreateFile{FileFault: types.FileFault{File: deltaPath}}, "cannot create %s: %v", deltaPath, err)
		}
		nb := deepCopy(*b)
		parentBacking := deepCopy(*b)
		nb.FileName = deltaPath
		nb.Parent = &parentBacking
		nb.DeltaDiskFormat = l.deltaFormat(parent)
		layers = append(layers, newLayer{disk: disk, path: deltaPath, backing: &nb})
	}

	// Every file exists: commit.
	extra := &snapshotExtra{
		vm:      vm.Self.Value,
		memory:  req.Memory && poweredOn,
		power:   types.VirtualMachinePowerStatePoweredOff,
		tracked: map[int32]*cbtFrozen{},
	}
	if extra.memory {
		extra.power = types.VirtualMachinePowerStatePoweredOn
	}
	for _, d := range vmDisks(frozenConfig.Hardware.Device) {
		if t := l.trackers[diskID{vm.Self.Value, d.Key}]; t != nil {
			extra.tracked[d.Key] = t.freeze()
			diskBacking(d).ChangeId = t.changeID()
		}
	}
	for _, nl := range layers {
		nl.disk.Backing = nl.backing
		l.ownDelta(vm, nl.path)
	}
	l.stun(vm)

	snap := &simulator.VirtualMachineSnapshot{}
	snap.Vm = vm.Self
	snap.Config = frozenConfig
	simulator.Map.Put(snap)
	l.snapshotSeq[vm.Self.Value]++
	node := types.VirtualMachineSnapshotTree{
		Snapshot:        snap.Self,
		Vm:              vm.Self,
		Name:            req.Name,
		Description:     req.Description,
		Id:              l.snapshotSeq[vm.Self.Value],
		CreateTime:      time.Now(),
		State:           extra.power,
		Quiesced:        req.Quiesce && poweredOn,
		ReplaySupported: types.NewBool(false),
	}
	if vm.Snapshot == nil {
		vm.Snapshot = &types.VirtualMachineSnapshotInfo{}
	}
	if cur := vm.Snapshot.CurrentSnapshot; cur != nil {
		parentNode, _ := findTree(vm.Snapshot.RootSnapshotList, *cur)
		parentNode.ChildSnapshotList = append(parentNode.ChildSnapshotList, node)
		if p, ok := simulator.Map.Get(*cur).(*simulator.VirtualMachineSnapshot); ok {
			// A snapshot object is read under its own lock; its list is replaced, never appended to.
			simulator.Map.WithLock(p, func() {
				p.ChildSnapshot = append(append([]types.ManagedObjectReference(nil), p.ChildSnapshot...), snap.Self)
			})
		}
	} else {
		vm.Snapshot.RootSnapshotList = append(vm.Snapshot.RootSnapshotList, node)
	}
	current := snap.Self
	vm.Snapshot.CurrentSnapshot = &current
	l.snapshots[snap.Self.Value] = extra
	l.configChanged(vm)
	publishVM(vm)
	return snap.Self, nil
}

func (l *lab) ownDelta(vm *simulator.VirtualMachine, path string) {
	if l.deltas[vm.Self.Value] == nil {
		l.deltas[vm.Self.Value] = map[string]bool{}
	}
	l.deltas[vm.Self.Value][path] = true
}

// allBackings lists every disk backing of the VM: its current devices and
// each snapshot's frozen devices.
func allBackings(vm *simulator.VirtualMachine) []*types.VirtualDiskFlatVer2BackingInfo {
	var out []*types.VirtualDiskFlatVer2BackingInfo
	add := func(devices []types.BaseVirtualDevice) {
		for _, d := range vmDisks(devices) {
			for b := diskBacking(d); b != nil; b = b.Parent {
				out = append(out, b)
			}
		}
	}
	add(vm.Config.Hardware.Device)
	for _, s := range vmSnapshots(vm) {
		add(s.Config.Hardware.Device)
	}
	return out
}

// vmSnapshots lists the VM's snapshot objects, children before parents.
func vmSnapshots(vm *simulator.VirtualMachine) []*simulator.VirtualMachineSnapshot {
	if vm.Snapshot == nil {
		return nil
	}
	var out []*simulator.VirtualMachineSnapshot
	for _, ref := range postOrder(vm.Snapshot.RootSnapshotList) {
		if s, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot); ok {
			out = append(out, s)
		}
	}
	return out
}

// hasSnapshot reports whether ref is still in the VM's snapshot tree: a
// task queued against a snapshot may run after another removed it.
func hasSnapshot(vm *simulator.VirtualMachine, ref types.ManagedObjectReference) bool {
	if vm.Snapshot == nil {
		return false
	}
	node, _ := findTree(vm.Snapshot.RootSnapshotList, ref)
	return node != nil
}

// snapshotGone is vSphere's answer to a call on a snapshot that was removed.
func snapshotGone(ref types.ManagedObjectReference) *methodFault {
	return newFault(&types.ManagedObjectNotFound{Obj: ref}, "The object has already been deleted or has not been completely created")
}

// removeOne deletes one snapshot the way ESXi does: the delta that holds the
// changes made after it is folded into the snapshot's own disk, so nothing
// the VM or the remaining snapshots see changes.
func (l *lab) removeOne(vm *simulator.VirtualMachine, ref types.ManagedObjectReference) *methodFault {
	snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return newFault(&types.ManagedObjectNotFound{Obj: ref}, "snapshot %s not found", ref.Value)
	}
	for _, disk := range vmDisks(snap.Config.Hardware.Device) {
		x := diskBacking(disk).FileName
		children := map[string]bool{}
		var capacity int64 = disk.CapacityInBytes
		for _, b := range allBackings(vm) {
			if b.Parent != nil && b.Parent.FileName == x {
				children[b.FileName] = true
			}
		}
		for _, d := range vmDisks(vm.Config.Hardware.Device) {
			if children[diskBacking(d).FileName] {
				capacity = d.CapacityInBytes
			}
		}
		if len(children) != 1 {
			continue
		}
		var y string
		for c := range children {
			y = c
		}
		if l.shared(x) || l.shared(y) {
			continue // a linked clone reads through x (linked.go): x stays as it is
		}
		if err := l.foldInto(vm, y, x, capacity); err != nil {
			return newFault(&types.FileFault{File: y}, "cannot consolidate %s into %s: %v", y, x, err)
		}
	}
	parent := treeParent(vm.Snapshot.RootSnapshotList, ref)
	if node, _ := findTree(vm.Snapshot.RootSnapshotList, ref); node != nil && parent != nil {
		if p, ok := simulator.Map.Get(*parent).(*simulator.VirtualMachineSnapshot); ok {
			simulator.Map.WithLock(p, func() {
				var kids []types.ManagedObjectReference
				for _, k := range p.ChildSnapshot {
					if k != ref {
						kids = append(kids, k)
					}
				}
				p.ChildSnapshot = append(kids, snapshotRefs(node.ChildSnapshotList)...)
			})
		}
	}
	vm.Snapshot.RootSnapshotList = detachFromTree(vm.Snapshot.RootSnapshotList, ref)
	if cur := vm.Snapshot.CurrentSnapshot; cur != nil && *cur == ref {
		vm.Snapshot.CurrentSnapshot = parent
	}
	delete(l.snapshots, ref.Value)
	simulator.Map.Remove(ref)
	return nil
}

// foldInto replaces layer x by its only child y (a full image), and renames
// every reference to y, as ESXi's consolidation leaves the parent's name.
func (l *lab) foldInto(vm *simulator.VirtualMachine, y, x string, capacity int64) error {
	yf, err := resolveLayer(y)
	if err != nil {
		return err
	}
	xf, err := resolveLayer(x)
	if err != nil {
		return err
	}
	if yf.sparse {
		if err := foldRedoLog(yf, xf); err != nil {
			return err
		}
		_ = os.Remove(yf.extent)
	} else if err := os.Rename(yf.extent, xf.extent); err != nil {
		if err := copySparse(yf.extent, xf.extent, capacity); err != nil {
			return err
		}
		_ = os.Remove(yf.extent)
	}
	var xParent *types.VirtualDiskFlatVer2BackingInfo
	for _, b := range allBackings(vm) {
		if b.FileName == x {
			xParent = b.Parent
			break
		}
	}
	hint := ""
	parentCID := "ffffffff"
	if xParent != nil {
		if pf, err := resolveLayer(xParent.FileName); err == nil {
			hint, _ = filepath.Rel(filepath.Dir(xf.descriptor), pf.descriptor)
			parentCID = descriptorCID(pf.descriptor)
		}
	}
	rewrite := writeDescriptor
	if xf.sparse {
		rewrite = writeRedoLogDescriptor
	}
	if err := rewrite(xf, capacity, descriptorCID(xf.descriptor), parentCID, hint); err != nil {
		return err
	}
	_ = os.Remove(yf.descriptor)
	delete(l.deltas[vm.Self.Value], y)
	// The VM's devices are its own (ownVM); a snapshot's frozen config is
	// read under the snapshot's lock, so it is replaced whole, never edited.
	renameLayer(vm.Config.Hardware.Device, y, x, xParent)
	for _, s := range vmSnapshots(vm) {
		config := deepCopy(s.Config)
		if renameLayer(config.Hardware.Device, y, x, xParent) {
			simulator.Map.WithLock(s, func() { s.Config = config })
		}
	}
	// Children of y now descend from x: point their descriptors at it.
	for _, b := range allBackings(vm) {
		if b.Parent != nil && b.Parent.FileName == x && b.FileName != x {
			if cf, err := resolveLayer(b.FileName); err == nil {
				rel, _ := filepath.Rel(filepath.Dir(cf.descriptor), xf.descriptor)
				_ = rewriteParent(cf.descriptor, rel, descriptorCID(xf.descriptor))
			}
		}
	}
	return nil
}

// foldToBase merges what is left of each disk's chain into its base disk
// once a VM has no snapshot: without snapshots an ESXi VM runs on its base
// disks ("Delete All" consolidates into them). A chain can outlive the
// snapshots when a removed snapshot's disk had two children (a revert
// started a second branch): that removal keeps the disk as the branches'
// shared parent, and nothing folded it afterwards.
func (l *lab) foldToBase(vm *simulator.VirtualMachine) *methodFault {
	for _, d := range vmDisks(vm.Config.Hardware.Device) {
		for b := diskBacking(d); b != nil && b.Parent != nil; b = diskBacking(d) {
			y, x := b.FileName, b.Parent.FileName
			if l.shared(x) || l.shared(y) {
				break // the chain from here down is a linked clone's too (linked.go)
			}
			if err := l.foldInto(vm, y, x, d.CapacityInBytes); err != nil {
				return newFault(&types.FileFault{File: y}, "cannot consolidate %s into %s: %v", y, x, err)
			}
		}
	}
	return nil
}

// renameLayer makes every backing named y (at any depth of a chain) name x,
// with x's parent, and reports whether there was one.
func renameLayer(devices []types.BaseVirtualDevice, y, x string, xParent *types.VirtualDiskFlatVer2BackingInfo) bool {
	renamed := false
	for _, d := range vmDisks(devices) {
		for b := diskBacking(d); b != nil; b = b.Parent {
			if b.FileName != y {
				continue
			}
			b.FileName, b.Parent = x, nil
			if xParent != nil {
				p := deepCopy(*xParent)
				b.Parent = &p
			} else {
				// x is a base disk: no delta format (VirtualDiskFlatVer2BackingInfo.deltaDiskFormat
				// is set on delta disks only), whatever y's layer was.
				b.DeltaDiskFormat = ""
			}
			renamed = true
		}
	}
	return renamed
}

// collectGarbage deletes delta layers that nothing refers to any more.
func (l *lab) collectGarbage(vm *simulator.VirtualMachine) {
	used := map[string]bool{}
	for _, b := range allBackings(vm) {
		used[b.FileName] = true
	}
	for path := range l.deltas[vm.Self.Value] {
		if !used[path] && !l.shared(path) {
			removeLayer(path)
			delete(l.deltas[vm.Self.Value], path)
		}
	}
}

func (l *lab) removeSnapshot(snap *simulator.VirtualMachineSnapshot, removeChildren bool) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok {
		return nil, newFault(&types.ManagedObjectNotFound{Obj: snap.Vm}, "VM of snapshot %s not found", snap.Self.Value)
	}
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var fault *methodFault
	simulator.Map.WithLock(vm, func() {
		// Another task may have removed it (or all snapshots) since this one was queued.
		if !hasSnapshot(vm, snap.Self) {
			fault = snapshotGone(snap.Self)
			return
		}
		targets := []types.ManagedObjectReference{snap.Self}
		if removeChildren {
			node, _ := findTree(vm.Snapshot.RootSnapshotList, snap.Self)
			targets = postOrder([]types.VirtualMachineSnapshotTree{*node})
		}
		if fault = l.lockedLayer(removalLayers(vm, targets)); fault != nil {
			return
		}
		ownVM(vm)
		fault = l.removeMany(vm, targets)
	})
	return nil, fault
}

func (l *lab) removeMany(vm *simulator.VirtualMachine, targets []types.ManagedObjectReference) *methodFault {
	var fault *methodFault
	for _, ref := range targets {
		if fault = l.removeOne(vm, ref); fault != nil {
			break
		}
	}
	if len(vm.Snapshot.RootSnapshotList) == 0 {
		vm.Snapshot = nil
		if fault == nil {
			fault = l.foldToBase(vm)
		}
	}
	l.stun(vm)
	l.collectGarbage(vm)
	l.configChanged(vm)
	publishVM(vm)
	if fault == nil && l.faults.take(func(f *armedFault) bool { return f.Kind == faultConsolidation }) != nil {
		// What a removal that could not merge every delta leaves behind.
		// Set in place: the registry cannot apply a change to a *bool field.
		vm.Runtime.ConsolidationNeeded = types.NewBool(true)
	}
	return fault
}

func (l *lab) removeAllSnapshots(vm *simulator.VirtualMachine) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var fault *methodFault
	simulator.Map.WithLock(vm, func() {
		if vm.Snapshot == nil {
			return
		}
		if fault = l.lockedLayer(allLayers(vm)); fault != nil {
			return
		}
		ownVM(vm)
		fault = l.removeMany(vm, postOrder(vm.Snapshot.RootSnapshotList))
	})
	return nil, fault
}

// revert discards the VM's current state and continues from the snapshot's:
// a new delta on top of the snapshot's disks, the snapshot's hardware, and
// powered off unless the snapshot holds memory. A nil snap is the VM's
// current snapshot when the task runs (RevertToCurrentSnapshot_Task).
func (l *lab) revert(vm *simulator.VirtualMachine, snap *simulator.VirtualMachineSnapshot, suppressPowerOn bool) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var fault *methodFault
	simulator.Map.WithLock(vm, func() {
		if snap == nil {
			if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
				snap, _ = simulator.Map.Get(*vm.Snapshot.CurrentSnapshot).(*simulator.VirtualMachineSnapshot)
			}
			if snap == nil {
				fault = newFault(&types.NotFound{}, "%s has no current snapshot", vm.Name)
				return
			}
		}
		if !hasSnapshot(vm, snap.Self) {
			fault = snapshotGone(snap.Self) // removed after this task was queued
			return
		}
		if fault = l.lockedLayer(currentLayers(vm)); fault != nil {
			return // a revert deletes the current layers
		}
		extra := l.snapshots[snap.Self.Value]
		config := deepCopy(snap.Config)
		home := vmHome(vm)
		var created []string
		for _, disk := range vmDisks(config.Hardware.Device) {
			b := diskBacking(disk)
			parent, err := resolveLayer(b.FileName)
			if err == nil {
				var deltaPath string
				deltaPath, err = nextDeltaPath(home, baseDiskName(b.FileName))
				if err == nil {
					err = l.newDelta(deltaPath, parent, disk.CapacityInBytes)
					created = append(created, deltaPath)
					parentBacking := deepCopy(*b)
					b.FileName = deltaPath
					b.Parent = &parentBacking
					b.DeltaDiskFormat = l.deltaFormat(parent)
				}
			}
			if err != nil {
				for _, p := range created {
					removeLayer(p)
				}
				fault = newFault(&types.FileFault{File: b.FileName}, "cannot revert disk %d: %v", disk.Key, err)
				return
			}
		}
		for _, p := range created {
			l.ownDelta(vm, p)
		}
		ownVM(vm)
		vm.Config.Hardware.Device = config.Hardware.Device
		vm.Config.ChangeTrackingEnabled = config.ChangeTrackingEnabled
		vm.Config.Hardware.NumCPU = config.Hardware.NumCPU
		vm.Config.Hardware.MemoryMB = config.Hardware.MemoryMB
		// The snapshot saved the whole configuration: its options come back too.
		vm.Config.ExtraConfig = config.ExtraConfig
		vm.Config.Annotation = config.Annotation
		enabled := config.ChangeTrackingEnabled != nil && *config.ChangeTrackingEnabled
		for _, disk := range vmDisks(vm.Config.Hardware.Device) {
			id := diskID{vm.Self.Value, disk.Key}
			var frozen *cbtFrozen
			if extra != nil {
				frozen = extra.tracked[disk.Key]
			}
			switch {
			case !enabled:
				delete(l.trackers, id)
				diskBacking(disk).ChangeId = ""
			case frozen != nil:
				t := &cbtTracker{}
				t.restore(frozen, disk.CapacityInBytes)
				l.trackers[id] = t
				diskBacking(disk).ChangeId = t.changeID()
			default:
				t := newTracker(disk.CapacityInBytes, l.cfg.cbtBlock)
				l.trackers[id] = t
				diskBacking(disk).ChangeId = t.changeID()
			}
		}
		current := snap.Self
		vm.Snapshot.CurrentSnapshot = &current
		state := types.VirtualMachinePowerStatePoweredOff
		if extra != nil && extra.memory && !suppressPowerOn {
			state = types.VirtualMachinePowerStatePoweredOn
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.powerState", Val: state},
			{Name: "summary.runtime.powerState", Val: state},
		})
		l.collectGarbage(vm)
		// The snapshot's configuration comes back under a new changeVersion:
		// it is a change like any other, not a return to the old version.
		l.configChanged(vm)
		publishVM(vm)
	})
	return nil, fault
}

// newDelta creates the layer a snapshot or a revert puts on top of `parent`:
// a redo log with -redo-logs (as ESXi does), else a full flat copy. Over a
// redo log (a linked clone's disk) it is always a redo log: a redo log holds
// only its own grains, so it cannot be copied as a whole image.
func (l *lab) newDelta(deltaPath string, parent layerFile, capacity int64) error {
	if l.cfg.redoLogs || parent.sparse {
		_, err := newRedoLog(deltaPath, parent, capacity)
		return err
	}
	delta, _ := resolveLayer(deltaPath)
	if err := copySparse(parent.extent, delta.extent, capacity); err != nil {
		return err
	}
	hint, _ := filepath.Rel(filepath.Dir(delta.descriptor), parent.descriptor)
	if err := writeDescriptor(delta, capacity, randomHex(4), descriptorCID(parent.descriptor), hint); err != nil {
		_ = os.Remove(delta.extent)
		return err
	}
	return nil
}

// deltaFormat is the deltaDiskFormat of a new delta's backing over `parent`:
// "redoLogFormat" (vmfsSparse) for a redo log; unset for the lab's full flat copies.
func (l *lab) deltaFormat(parent layerFile) string {
	if l.cfg.redoLogs || parent.sparse {
		return string(types.VirtualDiskDeltaDiskFormatRedoLogFormat)
	}
	return ""
}
