package main

import (
	"context"
	"fmt"
	"os"
	"path"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// cloneVM copies a VM's disks from the chosen point in time (a snapshot, or
// the current state) onto the target placement, then registers the copy.
func (l *lab) cloneVM(vm *simulator.VirtualMachine, req *types.CloneVM_Task, progress func(int32)) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	spec := req.Spec
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var source types.VirtualMachineConfigInfo
	var srcPool, srcHost *types.ManagedObjectReference
	var fault *methodFault
	var srcName string
	simulator.Map.WithLock(vm, func() {
		srcName = vm.Name
		srcPool, srcHost = vm.ResourcePool, vm.Runtime.Host
		if spec.Snapshot == nil {
			source = deepCopy(*vm.Config)
			return
		}
		snap, ok := simulator.Map.Get(*spec.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok || snap.Vm != vm.Self || !hasSnapshot(vm, snap.Self) {
			fault = newFault(&types.InvalidArgument{InvalidProperty: "spec.snapshot"}, "snapshot %s does not belong to %s", spec.Snapshot.Value, vm.Name)
			return
		}
		source = deepCopy(snap.Config)
	})
	if fault != nil {
		return nil, fault
	}
	linked := spec.Location.DiskMoveType == string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking)
	if linked && spec.Snapshot == nil {
		// VirtualMachineRelocateDiskMoveOptions: createNewChildDiskBacking shares the
		// source's disks, "only safe if the clone was taken from a snapshot point ...
		// for a clone this option is only valid when cloning from a snapshot".
		return nil, newFault(&types.InvalidArgument{InvalidProperty: "spec.location.diskMoveType"},
			"a linked clone (createNewChildDiskBacking) of %s needs spec.snapshot", srcName)
	}
	if spec.Customization != nil {
		// Checked against the source's adapters before anything is copied.
		if _, fault := planCustomization(req.Name, source.GuestId, source.Hardware.Device, spec.Customization); fault != nil {
			return nil, fault
		}
	}
	if req.Name == "" || len(req.Name) > 80 {
		return nil, newFault(&types.InvalidName{Name: req.Name}, "invalid VM name %q", req.Name)
	}
	folder, ok := simulator.Map.Get(req.Folder).(*simulator.Folder)
	if !ok {
		return nil, newFault(&types.ManagedObjectNotFound{Obj: req.Folder}, "folder %s not found", req.Folder.Value)
	}
	for _, child := range folder.ChildEntity {
		if e, ok := simulator.Map.Get(child).(mo.Entity); ok && e.Entity().Name == req.Name {
			return nil, newFault(&types.DuplicateName{Name: req.Name, Object: child}, "the name '%s' already exists", req.Name)
		}
	}
	loc := spec.Location
	pool := srcPool
	if loc.Pool != nil {
		pool = loc.Pool
	}
	host := srcHost
	if loc.Host != nil {
		host = loc.Host
	} else if loc.Pool != nil {
		host = firstHostOfPool(*loc.Pool)
	}
	if pool == nil || host == nil {
		return nil, newFault(&types.InvalidArgument{InvalidProperty: "spec.location.pool"}, "a resource pool is required to clone %s", srcName)
	}
	var srcHome object.DatastorePath
	srcHome.FromString(source.Files.VmPathName)
	homeDS := srcHome.Datastore
	if loc.Datastore != nil {
		ds, ok := simulator.Map.Get(*loc.Datastore).(*simulator.Datastore)
		if !ok {
			return nil, newFault(&types.ManagedObjectNotFound{Obj: *loc.Datastore}, "datastore %s not found", loc.Datastore.Value)
		}
		homeDS = ds.Name
	}

	var devices []types.BaseVirtualDevice
	var copied []string
	var sharedLayers []string // a linked clone's parents: every layer of the snapshot's chains
	var total, done int64
	for _, d := range vmDisks(source.Hardware.Device) {
		total += d.CapacityInBytes
	}
	index := 0
	for _, dev := range source.Hardware.Device {
		switch d := dev.(type) {
		case types.BaseVirtualSCSIController:
			devices = append(devices, dev)
		case types.BaseVirtualEthernetCard:
			// A clone gets its own MAC address unless the source's was set by hand.
			if card := d.GetVirtualEthernetCard(); card.AddressType != string(types.VirtualEthernetCardMacTypeManual) {
				card.MacAddress = ""
			}
			devices = append(devices, dev)
		case *types.VirtualDisk:
			b := diskBacking(d)
			src, err := resolveLayer(b.FileName)
			if err != nil {
				return nil, l.undoClone(copied, newFault(&types.FileNotFound{FileFault: types.FileFault{File: b.FileName}}, "%v", err))
			}
			ds := homeDS
			nb := types.VirtualDiskFlatVer2BackingInfo{DiskMode: b.DiskMode, ThinProvisioned: b.ThinProvisioned, EagerlyScrub: b.EagerlyScrub, Uuid: newDiskUUID()}
			for _, locator := range loc.Disk {
				if locator.DiskId != d.Key {
					continue
				}
				if target, ok := simulator.Map.Get(locator.Datastore).(*simulator.Datastore); ok {
					ds = target.Name
				}
				if fb, ok := locator.DiskBackingInfo.(*types.VirtualDiskFlatVer2BackingInfo); ok {
					if fb.ThinProvisioned != nil {
						nb.ThinProvisioned = fb.ThinProvisioned
					}
					if fb.EagerlyScrub != nil {
						nb.EagerlyScrub = fb.EagerlyScrub
					}
				}
			}
			name := req.Name + ".vmdk"
			if index > 0 {
				name = fmt.Sprintf("%s_%d.vmdk", req.Name, index)
			}
			index++
			nb.FileName = (&object.DatastorePath{Datastore: ds, Path: path.Join(req.Name, name)}).String()
			if linked {
				child, chain, err := newLinkedChild(b, nb.FileName, d.CapacityInBytes)
				if err != nil {
					return nil, l.undoClone(copied, newFault(&types.CannotCreateFile{FileFault: types.FileFault{File: nb.FileName}}, "cannot create the child disk of disk %d: %v", d.Key, err))
				}
				copied = append(copied, child.FileName)
				sharedLayers = append(sharedLayers, chain...)
				child.DiskMode, child.ThinProvisioned, child.EagerlyScrub = nb.DiskMode, nb.ThinProvisioned, nb.EagerlyScrub
				d.Backing = child
				devices = append(devices, d)
				continue
			}
			dst, err := resolveLayer(nb.FileName)
			if err == nil {
				err = flattenChain(src.datastorePath, dst.extent, d.CapacityInBytes)
			}
			if err == nil {
				copied = append(copied, nb.FileName)
				err = writeDescriptor(dst, d.CapacityInBytes, randomHex(4), "ffffffff", "")
			}
			if err != nil {
				return nil, l.undoClone(copied, newFault(&types.CannotCreateFile{FileFault: types.FileFault{File: nb.FileName}}, "cannot copy disk %d: %v", d.Key, err))
			}
			done += d.CapacityInBytes
			if total > 0 {
				progress(int32(done * 90 / total))
			}
			d.Backing = &nb
			devices = append(devices, d)
		}
	}
	config := types.VirtualMachineConfigSpec{
		Name:                  req.Name,
		GuestId:               source.GuestId,
		NumCPUs:               source.Hardware.NumCPU,
		MemoryMB:              int64(source.Hardware.MemoryMB),
		Annotation:            source.Annotation,
		ChangeTrackingEnabled: source.ChangeTrackingEnabled,
		Files:                 &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", homeDS)},
	}
	// A clone carries the source's options; the spec's own are applied on top.
	config.ExtraConfig = mergeExtraConfig(nil, source.ExtraConfig)
	if spec.Config != nil {
		config.ExtraConfig = mergeExtraConfig(config.ExtraConfig, spec.Config.ExtraConfig)
		config.InstanceUuid = spec.Config.InstanceUuid
		if spec.Config.Annotation != "" {
			config.Annotation = spec.Config.Annotation
		}
	}
	for _, dev := range devices {
		config.DeviceChange = append(config.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device:    dev,
		})
	}
	ctx := context.Background()
	// vcsim registers an existing disk only when its "-flat.vmdk" is there:
	// a linked clone's redo logs get an empty stand-in for the registration.
	placeholders := linkedPlaceholders(devices)
	f := object.NewFolder(l.inproc, req.Folder)
	t, err := f.CreateVM(ctx, config, object.NewResourcePool(l.inproc, *pool), object.NewHostSystem(l.inproc, *host))
	var info *types.TaskInfo
	if err == nil {
		info, err = t.WaitForResult(ctx, nil)
	}
	for _, p := range placeholders {
		_ = os.Remove(p)
	}
	if err != nil && t == nil {
		return nil, l.undoClone(copied, newFault(&types.SystemError{Reason: err.Error()}, "%v", err))
	}
	if fault := waitInproc(t, err); fault != nil {
		return nil, l.undoClone(copied, fault)
	}
	ref := info.Result.(types.ManagedObjectReference)
	l.share(ref.Value, sharedLayers)
	if linked {
		if target, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
			simulator.Map.WithLock(target, func() { restoreChains(target, devices) })
		}
	}
	clone := object.NewVirtualMachine(l.inproc, ref)
	if spec.Customization != nil {
		if target, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
			var fault *methodFault
			simulator.Map.WithLock(target, func() { fault = l.setPendingCustomization(target, spec.Customization) })
			if fault != nil {
				return nil, fault
			}
		}
	}
	if spec.Template {
		if err := clone.MarkAsTemplate(ctx); err != nil {
			return nil, newFault(&types.SystemError{Reason: err.Error()}, "%v", err)
		}
	} else if spec.PowerOn {
		pt, err := clone.PowerOn(ctx)
		if fault := waitInproc(pt, err); fault != nil {
			return nil, fault
		}
	}
	if target, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
		simulator.Map.WithLock(target, func() {
			l.newVMConfig(target)
			if target.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
				l.applyGuest(target) // spec.powerOn: the customization runs now
			}
		})
	}
	return ref, nil
}

func (l *lab) undoClone(copied []string, f *methodFault) *methodFault {
	for _, p := range copied {
		removeLayer(p)
	}
	return f
}

func firstHostOfPool(pool types.ManagedObjectReference) *types.ManagedObjectReference {
	rp, ok := simulator.Map.Get(pool).(*simulator.ResourcePool)
	if !ok || rp.Owner.Value == "" {
		return nil
	}
	switch cr := simulator.Map.Get(rp.Owner).(type) {
	case *simulator.ClusterComputeResource:
		if len(cr.Host) > 0 {
			return &cr.Host[0]
		}
	case *mo.ComputeResource:
		if len(cr.Host) > 0 {
			return &cr.Host[0]
		}
	}
	return nil
}
