package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Storage vMotion: RelocateVM_Task with spec.datastore (the VM's home and
// every disk not placed otherwise) and spec.disk[] (a datastore per disk
// device). vcsim's own RelocateVM_Task only swaps the VM's `datastore`
// property: it moves no file and leaves every backing's fileName on the old
// datastore. The lab does what vSphere does instead:
//
//   - every layer of a disk's chain moves with it, snapshots' layers
//     included (since vSphere 5.0 Storage vMotion migrates VMs with
//     snapshots, the whole chain to the disk's target), keeping its path
//     inside the datastore, so the descriptors' relative
//     parentFileNameHint stays right; the VM's other files (vmx, nvram,
//     logs, snapshot memory) follow spec.datastore;
//   - every backing (the VM's devices and each snapshot's) names the new
//     file and datastore; the disk keeps its uuid (the descriptor's
//     ddb.uuid moves with it), so a client finds its disks by uuid;
//   - Changed Block Tracking: the .ctk file moves with its disk and change
//     ids stay valid. VMware KB 2048201 ("Changed Block Tracking (CBT) is
//     reset after a Storage vMotion operation in vSphere 5.x") is fixed
//     from vSphere 6.0 on, where svMotion carries the tracking data over;
//     on 5.x an earlier change id fails and the backup application must
//     read the whole disk. The lab models 6.0 and later: the disk's tracker
//     and change id are untouched. A client that must survive a 5.x-style
//     reset is tested with the lab's cbt-reset endpoint.
//
// A layer held open by a data-path session cannot move (FileLocked,
// datapath.go); a target path that exists already fails with
// FileAlreadyExists, as a copy onto an existing file does.

// relocatesStorage tells whether a relocation moves disks or the VM's home.
func relocatesStorage(spec types.VirtualMachineRelocateSpec) bool {
	if spec.Datastore != nil {
		return true
	}
	for _, d := range spec.Disk {
		if d.Datastore.Value != "" {
			return true
		}
	}
	return false
}

// serveRelocate runs a Storage vMotion as a lab task on the VM.
func (l *lab) serveRelocate(w http.ResponseWriter, vm *simulator.VirtualMachine, req *types.RelocateVM_Task) {
	spec := req.Spec
	writeTask(w, "RelocateVM_Task", l.startVMTask(vm, "RelocateVM_Task", "relocateVm", true, func(func(int32)) (types.AnyType, *methodFault) {
		return l.relocate(vm, spec)
	}))
}

func (l *lab) relocate(vm *simulator.VirtualMachine, spec types.VirtualMachineRelocateSpec) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var layers []string
	simulator.Map.WithLock(vm, func() { layers = allLayers(vm) })
	for _, p := range layers {
		if l.shared(p) {
			// Moving the layers of a linked clone's chain is not modelled
			// (vSphere copies shared layers and keeps the originals): refused.
			return nil, newFault(&types.NotSupported{}, "the lab does not move %s: a linked clone reads through it", p)
		}
	}
	named := func(ref types.ManagedObjectReference) (string, *methodFault) {
		ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
		if !ok {
			return "", newFault(&types.ManagedObjectNotFound{Obj: ref}, "datastore %s not found", ref.Value)
		}
		return ds.Name, nil
	}
	home := ""
	if spec.Datastore != nil {
		name, fault := named(*spec.Datastore)
		if fault != nil {
			return nil, fault
		}
		home = name
	}
	perDisk := map[int32]string{}
	refs := map[string]types.ManagedObjectReference{}
	if spec.Datastore != nil {
		refs[home] = *spec.Datastore
	}
	for _, d := range spec.Disk {
		name, fault := named(d.Datastore)
		if fault != nil {
			return nil, fault
		}
		perDisk[d.DiskId] = name
		refs[name] = d.Datastore
	}
	var fault *methodFault
	var before, after []types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		before = append(before, vm.Datastore...)
		fault = l.moveStorage(vm, home, perDisk, refs)
		after = vm.Datastore
	})
	if fault != nil {
		return nil, fault
	}
	for _, ref := range before {
		if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok && simulator.FindReference(after, ref) == nil {
			simulator.Map.RemoveReference(ds, &ds.Vm, vm.Self)
		}
	}
	for _, ref := range after {
		if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok {
			simulator.Map.AddReference(ds, &ds.Vm, vm.Self)
		}
	}
	if spec.Host != nil || spec.Pool != nil || spec.Folder != nil {
		rest := types.VirtualMachineRelocateSpec{Host: spec.Host, Pool: spec.Pool, Folder: spec.Folder}
		t, err := object.NewVirtualMachine(l.inproc, vm.Self).Relocate(context.Background(), rest, types.VirtualMachineMovePriorityDefaultPriority)
		if f := waitInproc(t, err); f != nil {
			return nil, f
		}
	}
	return nil, nil
}

// moveStorage moves the files and rewrites the backings. Callers hold l.mu and the VM's lock.
func (l *lab) moveStorage(vm *simulator.VirtualMachine, home string, perDisk map[int32]string, refs map[string]types.ManagedObjectReference) *methodFault {
	// The target of each layer: every chain of a device key (the VM's and its snapshots') goes one way.
	target := map[string]string{} // old datastore path -> new datastore path
	byKey := func(devices []types.BaseVirtualDevice) {
		for _, d := range vmDisks(devices) {
			dest := perDisk[d.Key]
			if dest == "" {
				dest = home
			}
			if dest == "" {
				continue
			}
			for b := diskBacking(d); b != nil; b = b.Parent {
				if p := movedPath(b.FileName, dest); p != "" {
					target[b.FileName] = p
				}
			}
		}
	}
	byKey(vm.Config.Hardware.Device)
	for _, s := range vmSnapshots(vm) {
		byKey(s.Config.Hardware.Device)
	}
	var moving []string
	for from := range target {
		moving = append(moving, from)
	}
	if fault := l.lockedLayer(moving); fault != nil {
		return fault
	}
	// The VM's other files follow spec.datastore.
	oldHome := vmHome(vm)
	newHome := ""
	if home != "" {
		newHome = movedPath(oldHome, home)
	}
	for _, to := range target {
		if t, err := resolveLayer(to); err != nil {
			return newFault(&types.FileFault{File: to}, "%v", err)
		} else if _, err := os.Stat(t.descriptor); err == nil {
			return newFault(&types.FileAlreadyExists{FileFault: types.FileFault{File: to}}, "Cannot complete the operation because the file or folder %s already exists", to)
		}
	}
	for from, to := range target {
		if err := moveLayer(from, to); err != nil {
			return newFault(&types.FileFault{File: from}, "cannot move %s to %s: %v", from, to, err)
		}
	}
	if newHome != "" {
		if err := moveHome(oldHome, newHome); err != nil {
			return newFault(&types.FileFault{File: oldHome}, "cannot move %s to %s: %v", oldHome, newHome, err)
		}
	}

	ownVM(vm)
	retarget := func(devices []types.BaseVirtualDevice) bool {
		changed := false
		for _, d := range vmDisks(devices) {
			for b := diskBacking(d); b != nil; b = b.Parent {
				to, ok := target[b.FileName]
				if !ok {
					continue
				}
				b.FileName = to
				ref := refs[datastoreOf(to)]
				b.Datastore = &ref
				changed = true
			}
		}
		return changed
	}
	retarget(vm.Config.Hardware.Device)
	for _, s := range vmSnapshots(vm) {
		config := deepCopy(s.Config)
		if retarget(config.Hardware.Device) {
			simulator.Map.WithLock(s, func() { s.Config = config })
		}
	}
	for from, to := range target {
		if l.deltas[vm.Self.Value][from] {
			delete(l.deltas[vm.Self.Value], from)
			l.deltas[vm.Self.Value][to] = true
		}
	}
	files := vm.Config.Files
	if newHome != "" {
		files.VmPathName = movedPath(files.VmPathName, home)
		for _, p := range []*string{&files.SnapshotDirectory, &files.SuspendDirectory, &files.LogDirectory} {
			if *p != "" {
				*p = movedPath(*p, home)
			}
		}
		vm.Config.Files = files
		vm.Summary.Config.VmPathName = files.VmPathName
	}
	// The VM's datastores: its home's and its disks'.
	used := map[string]bool{datastoreOf(files.VmPathName): true}
	for _, b := range allBackings(vm) {
		used[datastoreOf(b.FileName)] = true
	}
	var datastores []types.ManagedObjectReference
	for _, e := range simulator.Map.All("Datastore") {
		if ds := e.(*simulator.Datastore); used[ds.Name] {
			datastores = append(datastores, ds.Self)
		}
	}
	vm.Datastore = datastores
	l.configChanged(vm)
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "datastore", Val: datastores},
		{Name: "config.files", Val: files},
		{Name: "summary.config.vmPathName", Val: files.VmPathName},
	})
	publishVM(vm)
	return nil
}

// datastoreOf is the datastore name of "[ds] path".
func datastoreOf(datastorePath string) string {
	var p object.DatastorePath
	p.FromString(datastorePath)
	return p.Datastore
}

// movedPath is datastorePath on datastore ds, or "" when it is there already.
func movedPath(datastorePath, ds string) string {
	var p object.DatastorePath
	if !p.FromString(datastorePath) || p.Datastore == ds {
		return ""
	}
	p.Datastore = ds
	return p.String()
}

// moveLayer moves a layer's descriptor and extent to another datastore.
func moveLayer(from, to string) error {
	src, err := resolveLayer(from)
	if err != nil {
		return err
	}
	dst, err := resolveLayer(to)
	if err != nil {
		return err
	}
	if src.sparse {
		dst = redoLogLayer(to)
	}
	if err := os.MkdirAll(filepath.Dir(dst.descriptor), 0o755); err != nil {
		return err
	}
	for _, pair := range [][2]string{{src.extent, dst.extent}, {src.descriptor, dst.descriptor}} {
		if err := moveFile(pair[0], pair[1]); err != nil {
			return err
		}
	}
	return nil
}

// moveFile renames, or copies and removes across file systems.
func moveFile(from, to string) error {
	if err := os.Rename(from, to); err == nil {
		return nil
	}
	info, err := os.Stat(from)
	if err != nil {
		return err
	}
	if err := copySparse(from, to, info.Size()); err != nil {
		return err
	}
	return os.Remove(from)
}

// moveHome moves what is left in the VM's home directory (all but the disk
// layers that stay where they are) to its new home.
func moveHome(oldHome, newHome string) error {
	src, err := resolveDir(oldHome)
	if err != nil {
		return err
	}
	dst, err := resolveDir(newHome)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || isLayerFile(name) {
			continue // a disk layer left behind belongs to a disk that stays
		}
		if err := moveFile(filepath.Join(src, name), filepath.Join(dst, name)); err != nil {
			return err
		}
	}
	if left, err := os.ReadDir(src); err == nil && len(left) == 0 {
		_ = os.Remove(src)
	}
	return nil
}

// isLayerFile tells a disk layer's descriptor or extent from the VM's other files.
func isLayerFile(name string) bool {
	return strings.HasSuffix(name, ".vmdk")
}

// resolveDir is the local directory of "[ds] dir".
func resolveDir(datastorePath string) (string, error) {
	var p object.DatastorePath
	p.FromString(datastorePath)
	dir, err := datastoreDir(p.Datastore)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.FromSlash(p.Path)), nil
}
