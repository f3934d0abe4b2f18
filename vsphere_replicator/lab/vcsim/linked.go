package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Linked clones: CloneVM_Task with spec.snapshot and
// spec.location.diskMoveType="createNewChildDiskBacking" creates "a new child
// disk backing on the destination datastore. None of the virtual disk's
// existing files should be moved" (VirtualMachineRelocateDiskMoveOptions,
// vSphere API reference). Each of the clone's disks is a vmfsSparse redo log
// (COWD) whose parent is the snapshot's layer of that disk, whatever
// -redo-logs says: the clone's backing names the whole chain (parent,
// deltaDiskFormat="redoLogFormat"), it holds only what the clone writes, and
// it reads everything else through the snapshot's layers.
//
// The snapshot's layers are then shared. vSphere's SDK programming guide
// ("Linked Virtual Machines": "Removing Snapshots and Deleting Linked
// Virtual Machines") has vCenter keep a disk that another virtual machine
// still uses: removing the snapshot takes it out of the snapshot tree but
// does not consolidate (rewrite or delete) a layer a linked clone reads
// through, and destroying the source VM deletes only the files no clone
// needs. The lab does the same: a shared layer is never folded into or
// deleted while a linked clone depends on it; a shared layer whose VM was
// destroyed is deleted with the last clone that used it. Destroying a
// linked clone deletes its own redo logs only.

// newLinkedChild creates the redo log `<clone dir>/<name>-000001.vmdk` over
// the snapshot's layer `parent` and returns its backing and the chain of
// layers it reads through (the parent and the parent's ancestors).
func newLinkedChild(parent *types.VirtualDiskFlatVer2BackingInfo, baseName string, capacity int64) (*types.VirtualDiskFlatVer2BackingInfo, []string, error) {
	parentLayer, err := resolveLayer(parent.FileName)
	if err != nil {
		return nil, nil, err
	}
	childPath := strings.TrimSuffix(baseName, ".vmdk") + "-000001.vmdk"
	if _, err := resolveLayer(childPath); err != nil {
		return nil, nil, err
	}
	if _, err := newRedoLog(childPath, parentLayer, capacity); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", childPath, err)
	}
	var chain []string
	for b := parent; b != nil; b = b.Parent {
		chain = append(chain, b.FileName)
	}
	parentCopy := deepCopy(*parent)
	child := &types.VirtualDiskFlatVer2BackingInfo{
		VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: childPath},
		Uuid:                         newDiskUUID(),
		Parent:                       &parentCopy,
		DeltaDiskFormat:              string(types.VirtualDiskDeltaDiskFormatRedoLogFormat),
	}
	return child, chain, nil
}

// share records that the linked clone `clone` reads through `layers`.
// The caller holds l.mu.
func (l *lab) share(clone string, layers []string) {
	for _, p := range layers {
		if l.linked[p] == nil {
			l.linked[p] = map[string]bool{}
		}
		l.linked[p][clone] = true
	}
}

// shared reports whether a linked clone reads through the layer `p`. The
// caller holds l.mu.
func (l *lab) shared(p string) bool { return len(l.linked[p]) > 0 }

// removeFilesOf deletes the layers of a destroyed VM: its own, unless a
// linked clone still reads through them (then they wait, as orphans, for the
// last such clone), and the orphans it was the last reader of. The caller
// holds l.mu.
func (l *lab) removeFilesOf(vm string, files []string) {
	seen := map[string]bool{}
	for _, p := range files {
		if seen[p] {
			continue
		}
		seen[p] = true
		readers := l.linked[p]
		if readers[vm] { // a parent of this linked clone, not its own
			delete(readers, vm)
			if len(readers) == 0 {
				delete(l.linked, p)
				if l.orphans[p] {
					delete(l.orphans, p)
					removeLayer(p)
				}
			}
			continue
		}
		if len(readers) > 0 {
			l.orphans[p] = true
			continue
		}
		removeLayer(p)
	}
}

// linkedPlaceholders creates an empty "-flat.vmdk" next to each redo log
// among `devices`' disks and returns their paths, for the caller to remove
// once vcsim registered the disks.
func linkedPlaceholders(devices []types.BaseVirtualDevice) []string {
	var out []string
	for _, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok || diskBacking(disk) == nil || diskBacking(disk).Parent == nil {
			continue
		}
		layer, err := resolveLayer(diskBacking(disk).FileName)
		if err != nil {
			continue
		}
		flat := strings.TrimSuffix(layer.descriptor, ".vmdk") + "-flat.vmdk"
		if f, err := os.OpenFile(flat, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
			_ = f.Close()
			out = append(out, flat)
		}
	}
	return out
}

// restoreChains puts the parent chains and delta format of the linked
// clone's disks back on its new configuration (vcsim keeps a disk's file
// name only). The caller holds the clone's lock.
func restoreChains(vm *simulator.VirtualMachine, devices []types.BaseVirtualDevice) {
	byFile := map[string]*types.VirtualDiskFlatVer2BackingInfo{}
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok && diskBacking(disk) != nil {
			byFile[diskBacking(disk).FileName] = diskBacking(disk)
		}
	}
	ownVM(vm)
	for _, disk := range vmDisks(vm.Config.Hardware.Device) {
		b := diskBacking(disk)
		if b == nil {
			continue
		}
		if want := byFile[b.FileName]; want != nil && want.Parent != nil {
			parent := deepCopy(*want.Parent)
			b.Parent = &parent
			b.DeltaDiskFormat = want.DeltaDiskFormat
		}
	}
}

// setAsideShared moves the files of the VM's own layers that linked clones
// read through out of its home directory, and returns what puts them back.
// The caller holds l.mu.
func (l *lab) setAsideShared(vm string, files []string) (func() error, error) {
	type moved struct{ from, to string }
	var done []moved
	restore := func() error {
		var first error
		for _, m := range done {
			if err := os.MkdirAll(filepath.Dir(m.from), 0o755); err != nil && first == nil {
				first = err
			}
			if err := os.Rename(m.to, m.from); err != nil && first == nil {
				first = err
			}
			_ = os.Remove(filepath.Dir(m.to))
		}
		return first
	}
	for _, p := range files {
		readers := l.linked[p]
		if len(readers) == 0 || readers[vm] {
			continue // not shared, or a parent this VM reads through (in another VM's home)
		}
		layer, err := resolveLayer(p)
		if err != nil {
			return restore, err
		}
		aside, err := os.MkdirTemp(filepath.Dir(filepath.Dir(layer.descriptor)), ".vrlab-shared-")
		if err != nil {
			return restore, err
		}
		for _, file := range []string{layer.descriptor, layer.extent} {
			to := filepath.Join(aside, filepath.Base(file))
			if err := os.Rename(file, to); err != nil {
				_ = restore()
				return func() error { return nil }, err
			}
			done = append(done, moved{file, to})
		}
	}
	return restore, nil
}
