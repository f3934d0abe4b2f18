package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	primaryDatastore   = "primary-ds"
	secondaryDatastore = "secondary-ds"
)

// lab holds what vcsim does not: disk files, Changed Block Tracking state and
// armed faults. One mutex guards it, and every lab operation that changes a
// VM holds it throughout. vcsim's locks are taken inside it, never the other
// way round, in this order: a VM's, then one of its snapshots' or a task's.
// Under a VM's lock the lab changes only memory it owns (ownVM) and replaces
// a snapshot's data whole, under that snapshot's lock: vcsim reads objects
// under their own lock and serializes what it read after letting go.
type lab struct {
	cfg      config
	inproc   *vim25.Client
	shutdown chan struct{}

	mu           sync.Mutex
	trackers     map[diskID]*cbtTracker     // live tracking state per disk
	snapshots    map[string]*snapshotExtra  // by snapshot moref value
	snapshotSeq  map[string]int32           // last snapshot id per VM
	deltas       map[string]map[string]bool // delta layers the lab created, per VM
	faults       *faultBox
	sessions     *sessionBook
	stats        *requestStats
	pages        *pager
	versions     *versionClock              // config.changeVersion, lab-wide
	busy         *busyBook                  // VMs a task is running on (vmtasks.go)
	tools        map[string]string          // VMware Tools state per VM moref value, when not "running"
	dataSessions *sessionRegistry           // disk layers a data-path session holds open (datapath.go)
	datastores   *datastoreBook             // kinds and changeId="*" answers (datastores.go)
	linked       map[string]map[string]bool // layer -> linked clones reading through it (linked.go)
	orphans      map[string]bool            // shared layers whose VM is gone (linked.go)
	// Guest customization (customize.go), by VM moref value: what waits for
	// the next power-on, what the guest reports since, and the DHCP leases.
	pendingGuests map[string]*guestIdentity
	guests        map[string]*guestIdentity
	dhcpLeases    uint32
	started       time.Time
}

type diskID struct {
	vm  string // VirtualMachine moref value
	key int32  // device key
}

// snapshotExtra is what a snapshot holds beyond vcsim's tree entry.
type snapshotExtra struct {
	vm      string
	memory  bool
	power   types.VirtualMachinePowerState
	tracked map[int32]*cbtFrozen
}

type inventory struct {
	datacenter string // its inventory path, what /folder's dcPath names: "DC0", "Sites/DC0"
	datastores map[string]string
	// instanceUUID is about.instanceUuid, this vCenter's identity.
	instanceUUID string
}

func newLab(cfg config, inproc *vim25.Client) *lab {
	return &lab{
		cfg:           cfg,
		inproc:        inproc,
		shutdown:      make(chan struct{}),
		trackers:      make(map[diskID]*cbtTracker),
		snapshots:     make(map[string]*snapshotExtra),
		snapshotSeq:   make(map[string]int32),
		deltas:        make(map[string]map[string]bool),
		started:       time.Now(),
		faults:        newFaultBox(),
		sessions:      newSessionBook(),
		stats:         newRequestStats(),
		pages:         newPager(),
		versions:      newVersionClock(time.Now),
		busy:          newBusyBook(),
		tools:         make(map[string]string),
		dataSessions:  newSessionRegistry(),
		datastores:    newDatastoreBook(cfg),
		linked:        make(map[string]map[string]bool),
		orphans:       make(map[string]bool),
		pendingGuests: make(map[string]*guestIdentity),
		guests:        make(map[string]*guestIdentity),
	}
}

func (l *lab) buildInventory(ctx context.Context, dsRoot string) (*inventory, error) {
	if err := l.nameSite(); err != nil {
		return nil, fmt.Errorf("site: %w", err)
	}
	finder := find.NewFinder(l.inproc, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	hosts, err := finder.HostSystemList(ctx, "*")
	if err != nil {
		return nil, err
	}
	inv := &inventory{datacenter: dc.Name(), datastores: map[string]string{}, instanceUUID: l.inproc.ServiceContent.About.InstanceUuid}
	for _, name := range l.cfg.datastoreNames() {
		dir := filepath.Join(dsRoot, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		for _, host := range hosts {
			dss, err := host.ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return nil, err
			}
			ds, err := dss.CreateLocalDatastore(ctx, name, dir)
			if err != nil {
				return nil, fmt.Errorf("datastore %s on %s: %w", name, host.Name(), err)
			}
			if err := setSummaryType(ds.Reference(), l.datastores.kind(name)); err != nil {
				return nil, err
			}
		}
		inv.datastores[name] = dir
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, err
	}
	pools, err := finder.ResourcePoolList(ctx, "*")
	if err != nil {
		return nil, err
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name() < hosts[j].Name() })
	pool := pools[0]
	network, err := l.buildNetworks(ctx, finder, hosts)
	if err != nil {
		return nil, fmt.Errorf("networks: %w", err)
	}
	if err := l.createVMs(ctx, folders.VmFolder, pool, hosts, network); err != nil {
		return nil, err
	}
	// Last: the finder above resolves paths below the datacenter's old one.
	if l.cfg.dcFolder != "" {
		if inv.datacenter, err = l.moveDatacenterIntoFolder(ctx, dc, l.cfg.dcFolder); err != nil {
			return nil, err
		}
	}
	return inv, nil
}

// createVMs creates the VMs a few at a time: vcsim serialises per object, so a
// little parallelism is what keeps 2,000 VMs within the start-up budget.
func (l *lab) createVMs(ctx context.Context, folder *object.Folder, pool *object.ResourcePool, hosts []*object.HostSystem, network types.ManagedObjectReference) error {
	const workers = 4
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := l.createVM(ctx, folder, pool, hosts[i%len(hosts)], network, i+1); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var firstErr error
	for i := 0; i < l.cfg.vms && firstErr == nil; i++ {
		select {
		case jobs <- i:
		case firstErr = <-errs:
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr == nil {
		select {
		case firstErr = <-errs:
		default:
		}
	}
	return firstErr
}

func (l *lab) createVM(ctx context.Context, folder *object.Folder, pool *object.ResourcePool, host *object.HostSystem, network types.ManagedObjectReference, i int) error {
	name := l.cfg.vmName(i)
	names := l.cfg.names()
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return err
	}
	devices = append(devices, scsi)
	for d := 0; d < l.cfg.disksPerVM; d++ {
		file := name + ".vmdk"
		if d > 0 {
			file = fmt.Sprintf("%s_%d.vmdk", name, d)
		}
		disk := devices.CreateDisk(scsi.(types.BaseVirtualController), types.ManagedObjectReference{},
			fmt.Sprintf("[%s] %s/%s", names.primaryDS, name, file))
		disk.Key = int32(2000 + d) // vSphere numbers disks from 2000, labels them "Hard disk N"
		disk.DeviceInfo = &types.Description{Label: fmt.Sprintf("Hard disk %d", d+1), Summary: "lab disk"}
		disk.CapacityInKB = l.cfg.diskSize / 1024
		disk.CapacityInBytes = l.cfg.diskSize
		backing := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		backing.ThinProvisioned = types.NewBool(true)
		backing.DiskMode = string(types.VirtualDiskModePersistent)
		backing.Uuid = newDiskUUID()
		devices = append(devices, disk)
	}
	devices = append(devices, newNIC(network, names.vmNetwork))
	spec := types.VirtualMachineConfigSpec{
		Name:     name,
		GuestId:  string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		NumCPUs:  2,
		MemoryMB: 2048,
		Files:    &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", names.primaryDS)},
	}
	spec.DeviceChange, err = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return err
	}
	for _, change := range spec.DeviceChange {
		if _, ok := change.GetVirtualDeviceConfigSpec().Device.(*types.VirtualDisk); ok {
			change.GetVirtualDeviceConfigSpec().FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
	}
	task, err := folder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return err
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	ref := res.Result.(types.ManagedObjectReference)
	vm := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	var disks []*types.VirtualDisk
	simulator.Map.WithLock(vm, func() {
		l.newVMConfig(vm)
		disks = vmDisks(vm.Config.Hardware.Device)
	})
	for _, disk := range disks {
		if err := l.createDiskFiles(disk); err != nil {
			return err
		}
	}
	if !l.cfg.poweredOff {
		if _, err := object.NewVirtualMachine(l.inproc, ref).PowerOn(ctx); err != nil {
			return err
		}
	}
	l.refreshTools(ref)
	return nil
}

// vmDisks lists the virtual disks of a device list in device order.
func vmDisks(devices []types.BaseVirtualDevice) []*types.VirtualDisk {
	var disks []*types.VirtualDisk
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			disks = append(disks, disk)
		}
	}
	return disks
}

func diskBacking(disk *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
	b, _ := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	return b
}

// findVM returns the VM of that name, or of that moref value. A VM's name
// is read under its lock: a rename changes it under that lock.
func findVM(nameOrRef string) *simulator.VirtualMachine {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		if vm.Self.Value == nameOrRef {
			return vm
		}
		var name string
		simulator.Map.WithLock(vm, func() { name = vm.Name })
		if name == nameOrRef {
			return vm
		}
	}
	return nil
}

// ownVM gives the VM fresh copies of its configuration, snapshot tree,
// summary and guest info, to be changed in place. vcsim's property
// collector copies references to a VM's data under the VM's lock but
// serializes them after releasing it, and the updates queued for
// WaitForUpdatesEx keep references too: changing memory a reader may still
// hold races with it, lock or no lock (go test -race showed exactly that for
// device backings, extraConfig and the snapshot tree). Every lab change to a
// VM starts with ownVM, under the VM's lock; what was published before is
// never written again.
func ownVM(vm *simulator.VirtualMachine) {
	config := deepCopy(*vm.Config)
	vm.Config = &config
	if vm.Snapshot != nil {
		info := deepCopy(*vm.Snapshot)
		vm.Snapshot = &info
	}
	vm.Summary = deepCopy(vm.Summary)
	if vm.Guest != nil {
		guest := deepCopy(*vm.Guest)
		vm.Guest = &guest
	}
}

// vmGone reports whether a VM was destroyed after a task on it was queued.
func vmGone(vm *simulator.VirtualMachine) *methodFault {
	if simulator.Map.Get(vm.Self) == nil {
		return newFault(&types.ManagedObjectNotFound{Obj: vm.Self}, "The object has already been deleted or has not been completely created")
	}
	return nil
}
