package main

import (
	"os"

	"github.com/vmware/govmomi/vim25/types"
)

// deleteVirtualDisk deletes one disk layer as ESXi does: its descriptor and
// its extent. The vSphere API reference (VirtualDiskManager.DeleteVirtualDisk_Task)
// says "All files relating to the disk will be deleted". For a snapshot's
// redo log that is the descriptor and its "-delta.vmdk" extent, never the
// parents; vcsim's own implementation looks only for a "-flat.vmdk" extent
// and fails on a redo log, leaving it behind.
//
// A missing descriptor is FileNotFound, and a layer a data-path session (VDDK)
// holds open is FileLocked, as for every other task that removes a layer.
func (l *lab) deleteVirtualDisk(name string) (types.AnyType, *methodFault) {
	layer, err := resolveLayer(name)
	if err != nil {
		return nil, newFault(&types.InvalidDatastorePath{DatastorePath: name}, "%v", err)
	}
	if _, err := os.Stat(layer.descriptor); err != nil {
		return nil, newFault(&types.FileNotFound{FileFault: types.FileFault{File: name}}, "File %s was not found", name)
	}
	if refused := l.lockedLayer([]string{name}); refused != nil {
		return nil, refused
	}
	for _, file := range []string{layer.extent, layer.descriptor} {
		if err := os.Remove(file); err != nil && !os.IsNotExist(err) {
			return nil, newFault(&types.CannotDeleteFile{FileFault: types.FileFault{File: name}}, "%v", err)
		}
	}
	return nil, nil
}
