package main

import (
	"net/http"
	"os"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// serveDeleteVirtualDisk answers VirtualDiskManager.DeleteVirtualDisk_Task
// for a datastore path ("[ds] dir/disk.vmdk"); a URL is left to vcsim.
//
// The vSphere API reference (DeleteVirtualDiskRequestType) says of
// `datacenter`: "If name is a datastore path, the datacenter for that
// datastore path. [...] If not specified on a call to VirtualCenter, name
// must be a URL": the lab is a vCenter, so a datastore path without one is
// refused (InvalidArgument) before any task. The task's entity is that
// datacenter (a task's entity is a managed entity; pyVmomi refuses the manager).
func (l *lab) serveDeleteVirtualDisk(w http.ResponseWriter, method *simulator.Method, req *types.DeleteVirtualDisk_Task) bool {
	if !strings.HasPrefix(req.Name, "[") {
		return false
	}
	if req.Datacenter == nil {
		writeFault(w, newFault(&types.InvalidArgument{InvalidProperty: "datacenter"},
			"a datastore path (%s) needs the datacenter of its datastore on vCenter", req.Name))
		return true
	}
	dc, ok := simulator.Map.Get(*req.Datacenter).(*simulator.Datacenter)
	if !ok {
		writeFault(w, newFault(&types.ManagedObjectNotFound{Obj: *req.Datacenter}, "datacenter %s not found", req.Datacenter.Value))
		return true
	}
	work := func(func(int32)) (types.AnyType, *methodFault) { return l.deleteVirtualDisk(req.Name) }
	writeTask(w, method.Name, startTask(dc, method.Name, "deleteVirtualDisk", nil, work))
	return true
}

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
