package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// waitInproc turns a vcsim task's outcome into the lab's fault form.
func waitInproc(t *object.Task, err error) *methodFault {
	if err == nil {
		_, err = t.WaitForResult(context.Background(), nil)
	}
	if err == nil {
		return nil
	}
	var te task.Error
	if errors.As(err, &te) {
		return &methodFault{fault: te.Fault(), msg: te.LocalizedMessage}
	}
	return newFault(&types.SystemError{Reason: err.Error()}, "%v", err)
}

func (l *lab) queryChangedDiskAreas(vm *simulator.VirtualMachine, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var info *types.DiskChangeInfo
	var fault *methodFault
	simulator.Map.WithLock(vm, func() { info, fault = l.queryLocked(vm, req) })
	return info, fault
}

func (l *lab) queryLocked(vm *simulator.VirtualMachine, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *methodFault) {
	var devices []types.BaseVirtualDevice
	var frozen *cbtFrozen
	if req.Snapshot != nil {
		snap, ok := simulator.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok {
			return nil, newFault(&types.ManagedObjectNotFound{Obj: *req.Snapshot}, "snapshot %s not found", req.Snapshot.Value)
		}
		extra := l.snapshots[snap.Self.Value]
		if snap.Vm != vm.Self || extra == nil {
			return nil, newFault(&types.InvalidArgument{InvalidProperty: "snapshot"}, "snapshot %s does not belong to %s", req.Snapshot.Value, vm.Name)
		}
		devices = snap.Config.Hardware.Device
		frozen = extra.tracked[req.DeviceKey]
	} else {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			return nil, newFault(&types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOff, ExistingState: vm.Runtime.PowerState},
				"changes of a running VM can only be queried against a snapshot")
		}
		devices = vm.Config.Hardware.Device
		if t := l.trackers[diskID{vm.Self.Value, req.DeviceKey}]; t != nil {
			frozen = t.freeze()
		}
	}
	var disk *types.VirtualDisk
	for _, d := range vmDisks(devices) {
		if d.Key == req.DeviceKey {
			disk = d
		}
	}
	if disk == nil {
		return nil, newFault(&types.InvalidArgument{InvalidProperty: "deviceKey"}, "no virtual disk with key %d", req.DeviceKey)
	}
	capacity := disk.CapacityInBytes
	if req.StartOffset < 0 || req.StartOffset >= capacity {
		return nil, newFault(&types.InvalidArgument{InvalidProperty: "startOffset"},
			"startOffset %d is outside the disk (capacity %d)", req.StartOffset, capacity)
	}
	id, ok := parseChangeID(req.ChangeId)
	if !ok {
		return nil, newFault(&types.InvalidArgument{InvalidProperty: "changeId"}, "malformed change id %q", req.ChangeId)
	}
	file := diskBacking(disk).FileName
	if frozen == nil {
		return nil, newFault(&types.FileFault{File: file}, "Error caused by file %s: changed block tracking is not active for this disk", file)
	}
	end := req.StartOffset + l.cfg.cbtWindow
	if end > capacity {
		end = capacity
	}
	var areas [][2]int64
	if id.all {
		switch l.datastores.starAnswer(datastoreOfPath(file)) {
		case starFault:
			return nil, newFault(&types.FileFault{File: file},
				"Error caused by file %s: changed block tracking cannot list the allocated areas on this datastore", file)
		case starWhole:
			rest := capacity - req.StartOffset
			info := &types.DiskChangeInfo{StartOffset: req.StartOffset, Length: rest}
			info.ChangedArea = []types.DiskChangeExtent{{Start: req.StartOffset, Length: rest}}
			return info, nil
		}
		layer, err := resolveLayer(file)
		if err != nil {
			return nil, newFault(&types.FileFault{File: file}, "%v", err)
		}
		segs, err := layerAllocated(layer, req.StartOffset, end)
		if err != nil {
			return nil, newFault(&types.FileFault{File: file}, "Error caused by file %s: %v", file, err)
		}
		areas = alignExtents(segs, frozen.block, req.StartOffset, end)
	} else {
		if !frozen.knows(id) {
			return nil, newFault(&types.FileFault{File: file}, "Error caused by file %s: change id %q is not valid for this disk", file, req.ChangeId)
		}
		areas = frozen.changedSince(id.seq, req.StartOffset, end)
	}
	info := &types.DiskChangeInfo{StartOffset: req.StartOffset, Length: end - req.StartOffset}
	for _, a := range areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a[0], Length: a[1] - a[0]})
	}
	return info, nil
}

func diskCapacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes >= d.CapacityInKB*1024 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

func (l *lab) reconfigure(vm *simulator.VirtualMachine, spec types.VirtualMachineConfigSpec) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	// A stale changeVersion is refused before anything else is looked at;
	// checked again below, with the change, under the same lock.
	var fault *methodFault
	simulator.Map.WithLock(vm, func() { fault = checkChangeVersion(vm, &spec) })
	if fault != nil {
		return nil, fault
	}
	if fault := checkNICs(vm, &spec); fault != nil {
		return nil, fault
	}
	options := spec.ExtraConfig
	spec.ExtraConfig = nil
	for _, o := range options {
		if strings.HasPrefix(o.GetOptionValue().Key, "SET.") {
			spec.ExtraConfig = append(spec.ExtraConfig, o) // vcsim's own guest property shortcuts
		}
	}
	simulator.Map.WithLock(vm, func() { fault = l.reconfigureLocked(vm, spec, options) })
	return nil, fault
}

// reconfigureLocked checks the spec, lets vcsim apply it and then does what
// vcsim does not (disk files, extents, CBT, extraConfig as vSphere keeps it),
// all under the VM's lock: the changeVersion check and the change are one
// step for any other client.
func (l *lab) reconfigureLocked(vm *simulator.VirtualMachine, spec types.VirtualMachineConfigSpec, options []types.BaseOptionValue) *methodFault {
	if fault := checkChangeVersion(vm, &spec); fault != nil {
		return fault
	}
	failpointAfterVersionCheck()
	before := map[int32]*types.VirtualDisk{}
	order := map[int32]int{}
	for i, d := range vm.Config.Hardware.Device {
		order[d.GetVirtualDevice().Key] = i
	}
	hasSnapshots := vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0
	for _, d := range vmDisks(vm.Config.Hardware.Device) {
		c := deepCopy(*d)
		before[d.Key] = &c
	}
	for _, change := range spec.DeviceChange {
		c := change.GetVirtualDeviceConfigSpec()
		disk, ok := c.Device.(*types.VirtualDisk)
		if !ok || c.Operation != types.VirtualDeviceConfigSpecOperationEdit {
			continue
		}
		old := before[disk.Key]
		if old == nil {
			return newFault(&types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "deviceChange"}}, "no virtual disk with key %d", disk.Key)
		}
		newCap := diskCapacity(disk)
		if disk.CapacityInBytes == old.CapacityInBytes && disk.CapacityInKB != old.CapacityInKB {
			newCap = disk.CapacityInKB * 1024
		}
		switch {
		case newCap < old.CapacityInBytes:
			return newFault(&types.InvalidDeviceOperation{}, "disk %d cannot shrink from %d to %d bytes", disk.Key, old.CapacityInBytes, newCap)
		case newCap > old.CapacityInBytes && hasSnapshots:
			return newFault(&types.InvalidDeviceOperation{}, "disk %d cannot be extended while the VM has snapshots", disk.Key)
		}
	}

	name, config, summary := vm.Name, vm.Config, vm.Summary
	ownVM(vm)
	if fault := vcsimReconfigure(vm, spec); fault != nil {
		// What vcsim applied before it failed is undone: a failed
		// reconfigure changes nothing, as on vSphere.
		vm.Name, vm.Config, vm.Summary = name, config, summary
		publishVM(vm)
		return fault
	}
	ownVM(vm) // vcsim published the device list it built: the lab's changes go to a copy

	var fault *methodFault
	vm.Config.ExtraConfig = mergeExtraConfig(vm.Config.ExtraConfig, options)
	keepDeviceOrder(vm.Config.Hardware.Device, order)
	for _, d := range vmDisks(vm.Config.Hardware.Device) {
		old := before[d.Key]
		if old != nil && diskBacking(old) != nil && diskBacking(d) != nil && diskBacking(old).FileName != diskBacking(d).FileName {
			// vCenter hands a removed disk's key to the next one added: a
			// different file under the same key is a new disk, not the old one.
			delete(l.trackers, diskID{vm.Self.Value, d.Key})
			old = nil
		}
		if b := diskBacking(d); old == nil && b != nil && b.Uuid == "" {
			b.Uuid = newDiskUUID() // every disk vSphere creates has one (VirtualDiskFlatVer2BackingInfo.uuid)
		}
		capacity := diskCapacity(d)
		if old != nil && d.CapacityInBytes == old.CapacityInBytes && d.CapacityInKB != old.CapacityInKB {
			capacity = d.CapacityInKB * 1024
		}
		d.CapacityInBytes, d.CapacityInKB = capacity, capacity/1024
		layer, err := resolveLayer(diskBacking(d).FileName)
		if err != nil {
			continue
		}
		switch {
		case old == nil:
			if st, err := os.Stat(layer.extent); err != nil || st.Size() == 0 {
				if err := l.createDiskFiles(d); err != nil {
					fault = newFault(&types.CannotCreateFile{FileFault: types.FileFault{File: layer.datastorePath}}, "%v", err)
				}
			}
		case capacity > old.CapacityInBytes:
			if err := os.Truncate(layer.extent, capacity); err != nil {
				fault = newFault(&types.FileFault{File: layer.datastorePath}, "cannot extend: %v", err)
				continue
			}
			_ = writeDescriptor(layer, capacity, descriptorCID(layer.descriptor), "ffffffff", "")
			if t := l.trackers[diskID{vm.Self.Value, d.Key}]; t != nil {
				t.resize(capacity)
			}
		}
		if t := l.trackers[diskID{vm.Self.Value, d.Key}]; t != nil {
			diskBacking(d).ChangeId = t.changeID()
		}
	}
	for key, old := range before {
		still := false
		for _, d := range vmDisks(vm.Config.Hardware.Device) {
			still = still || (d.Key == key && diskBacking(d) != nil && diskBacking(old) != nil &&
				diskBacking(d).FileName == diskBacking(old).FileName)
		}
		if !still {
			delete(l.trackers, diskID{vm.Self.Value, key})
			for _, change := range spec.DeviceChange {
				c := change.GetVirtualDeviceConfigSpec()
				if c.Device.GetVirtualDevice().Key == key && c.FileOperation == types.VirtualDeviceConfigSpecFileOperationDestroy {
					removeLayer(diskBacking(old).FileName)
				}
			}
		}
	}
	if spec.ChangeTrackingEnabled != nil && !*spec.ChangeTrackingEnabled {
		l.activateTracking(vm) // switching off takes effect at once
	}
	l.configChanged(vm)
	publishVM(vm)
	return fault
}

// labSession is who vcsim records as the user of the changes the lab has it make.
var labSession = &simulator.Session{UserSession: types.UserSession{UserName: "vsphere_replicator-lab"}}

// vcsimReconfigure runs vcsim's own ReconfigVM_Task on a VM whose lock the
// caller holds, so the change cannot interleave with another client's (a
// call through the in-process client would take the lock itself, after the
// lab had let go of it). vcsim runs the task to its end before returning.
func vcsimReconfigure(vm *simulator.VirtualMachine, spec types.VirtualMachineConfigSpec) *methodFault {
	ctx := &simulator.Context{Context: context.Background(), Session: labSession, Caller: &vm.Self, Map: simulator.Map}
	body, ok := vm.ReconfigVMTask(ctx, &types.ReconfigVM_Task{This: vm.Self, Spec: spec}).(*methods.ReconfigVM_TaskBody)
	if !ok || body.Res == nil {
		return newFault(&types.SystemError{Reason: "vcsim gave no reconfigure task"}, "vcsim gave no reconfigure task")
	}
	task, ok := simulator.Map.Get(body.Res.Returnval).(*simulator.Task)
	if !ok {
		return newFault(&types.SystemError{Reason: "vcsim's reconfigure task is gone"}, "vcsim's reconfigure task is gone")
	}
	if e := task.Info.Error; e != nil {
		return &methodFault{fault: e.Fault, msg: e.LocalizedMessage}
	}
	return nil
}

// mergeExtraConfig applies options as vSphere does: a key set again is
// replaced, a key set to an empty value is removed (vcsim only appends).
// It returns a new list and leaves current as it was.
func mergeExtraConfig(current []types.BaseOptionValue, options []types.BaseOptionValue) []types.BaseOptionValue {
	for _, o := range options {
		v := o.GetOptionValue()
		if strings.HasPrefix(v.Key, "SET.") {
			continue
		}
		kept := make([]types.BaseOptionValue, 0, len(current)+1)
		for _, c := range current {
			if c.GetOptionValue().Key != v.Key {
				kept = append(kept, c)
			}
		}
		current = kept
		if s, isString := v.Value.(string); v.Value != nil && (!isString || s != "") {
			current = append(current, &types.OptionValue{Key: v.Key, Value: v.Value})
		}
	}
	return current
}

// keepDeviceOrder undoes vcsim's habit of moving an edited device to the end:
// vSphere keeps the device list in place, and callers index disks by position.
func keepDeviceOrder(devices []types.BaseVirtualDevice, order map[int32]int) {
	position := func(d types.BaseVirtualDevice) int {
		if i, ok := order[d.GetVirtualDevice().Key]; ok {
			return i
		}
		return len(order) // devices added by this change go last
	}
	sort.SliceStable(devices, func(i, j int) bool { return position(devices[i]) < position(devices[j]) })
}

func (l *lab) powerOn(vm *simulator.VirtualMachine) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := checkStaticMACs(vm); f != nil {
		return nil, f
	}
	t, err := object.NewVirtualMachine(l.inproc, vm.Self).PowerOn(context.Background())
	if f := waitInproc(t, err); f != nil {
		return nil, f
	}
	simulator.Map.WithLock(vm, func() {
		ownVM(vm)
		before := changeIDs(vm)
		l.stun(vm)
		if changeIDs(vm) != before {
			l.configChanged(vm) // the disks' change ids are part of the configuration
		}
		publishVM(vm)
		l.publishTools(vm)
		l.applyGuest(vm)
	})
	return nil, nil
}

// changeIDs lists the change ids of a VM's disks, to tell whether a stun changed any.
func changeIDs(vm *simulator.VirtualMachine) string {
	var ids []string
	for _, d := range vmDisks(vm.Config.Hardware.Device) {
		ids = append(ids, diskBacking(d).ChangeId)
	}
	return strings.Join(ids, "\n")
}

func (l *lab) destroy(vm *simulator.VirtualMachine) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var files []string
	simulator.Map.WithLock(vm, func() {
		for _, b := range allBackings(vm) {
			files = append(files, b.FileName)
		}
	})
	if fault := l.lockedLayer(files); fault != nil {
		return nil, fault
	}
	// vcsim deletes the VM's whole home directory: the layers a linked clone
	// still reads through are set aside and put back (linked.go).
	restore, err := l.setAsideShared(vm.Self.Value, files)
	if err != nil {
		return nil, newFault(&types.FileFault{}, "cannot keep the layers linked clones share: %v", err)
	}
	t, err := object.NewVirtualMachine(l.inproc, vm.Self).Destroy(context.Background())
	f := waitInproc(t, err)
	if rerr := restore(); rerr != nil && f == nil {
		f = newFault(&types.FileFault{}, "cannot put back the layers linked clones share: %v", rerr)
	}
	if f != nil {
		return nil, f
	}
	l.removeFilesOf(vm.Self.Value, files)
	for id := range l.trackers {
		if id.vm == vm.Self.Value {
			delete(l.trackers, id)
		}
	}
	for ref, extra := range l.snapshots {
		if extra.vm == vm.Self.Value {
			delete(l.snapshots, ref)
		}
	}
	delete(l.deltas, vm.Self.Value)
	delete(l.guests, vm.Self.Value)
	delete(l.pendingGuests, vm.Self.Value)
	return nil, nil
}

// consolidate merges what a snapshot removal left behind. On ESXi that
// rewrites the disks' backing chain in the VM's configuration, so it gets a
// new changeVersion; the lab's removals leave no delta to merge.
func (l *lab) consolidate(vm *simulator.VirtualMachine) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var fault *methodFault
	simulator.Map.WithLock(vm, func() { fault = l.lockedLayer(allLayers(vm)) })
	if fault != nil {
		return nil, fault
	}
	simulator.Map.WithLock(vm, func() {
		ownVM(vm)
		vm.Runtime.ConsolidationNeeded = types.NewBool(false) // in place: *bool fields cannot go through Map.Update
		l.configChanged(vm)
		publishVM(vm)
	})
	return nil, nil
}

// guestWrite writes into the disk's current layer, as the running guest
// would: never into a layer a snapshot has frozen.
func (l *lab) guestWrite(vmName string, index int, offset int64, data []byte) (map[string]interface{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	vm := findVM(vmName)
	if vm == nil {
		return nil, fmt.Errorf("no VM named %q", vmName)
	}
	var result map[string]interface{}
	var err error
	simulator.Map.WithLock(vm, func() {
		disks := vmDisks(vm.Config.Hardware.Device)
		if index < 0 || index >= len(disks) {
			err = fmt.Errorf("%s has %d disks; disk %d does not exist", vm.Name, len(disks), index)
			return
		}
		disk := disks[index]
		if offset < 0 || offset+int64(len(data)) > disk.CapacityInBytes {
			err = fmt.Errorf("write of %d bytes at offset %d does not fit disk %d of %s (capacity %d)",
				len(data), offset, index, vm.Name, disk.CapacityInBytes)
			return
		}
		layer, lerr := resolveLayer(diskBacking(disk).FileName)
		if lerr != nil {
			err = lerr
			return
		}
		chain, oerr := openChain(layer.datastorePath, true)
		if oerr != nil {
			err = oerr
			return
		}
		err = chain.WriteAt(data, offset)
		chain.Close()
		if err != nil {
			return
		}
		if t := l.trackers[diskID{vm.Self.Value, disk.Key}]; t != nil {
			t.recordWrite(offset, int64(len(data)))
		}
		result = map[string]interface{}{
			"vm": vm.Name, "disk": index, "device_key": disk.Key, "offset": offset,
			"length": len(data), "file": layer.datastorePath,
		}
	})
	return result, err
}

// cbtReset is what a host crash or a CBT reset does: the disk's tracking
// identity is regenerated, so every change id handed out before is unknown.
func (l *lab) cbtReset(vmName string, index int) (map[string]interface{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	vm := findVM(vmName)
	if vm == nil {
		return nil, fmt.Errorf("no VM named %q", vmName)
	}
	var out []map[string]interface{}
	var err error
	var name string
	simulator.Map.WithLock(vm, func() {
		name = vm.Name
		ownVM(vm)
		for i, disk := range vmDisks(vm.Config.Hardware.Device) {
			if index >= 0 && i != index {
				continue
			}
			id := diskID{vm.Self.Value, disk.Key}
			if l.trackers[id] == nil {
				continue
			}
			l.trackers[id] = newTracker(disk.CapacityInBytes, l.cfg.cbtBlock)
			diskBacking(disk).ChangeId = l.trackers[id].changeID()
			out = append(out, map[string]interface{}{"disk": i, "device_key": disk.Key, "change_id": l.trackers[id].changeID()})
		}
		if len(out) == 0 {
			err = fmt.Errorf("changed block tracking is not active on %s", vm.Name)
			return
		}
		l.configChanged(vm)
		publishVM(vm)
	})
	return map[string]interface{}{"vm": name, "disks": out}, err
}

// layerAllocated lists the allocated byte ranges of a layer within [from, to):
// a flat layer's own, or for a redo log those of its whole chain.
func layerAllocated(layer layerFile, from, to int64) ([][2]int64, error) {
	if !layer.sparse {
		return dataSegments(layer.extent, from, to)
	}
	chain, err := openChain(layer.datastorePath, false)
	if err != nil {
		return nil, err
	}
	defer chain.Close()
	return chain.allocated(from, to)
}
