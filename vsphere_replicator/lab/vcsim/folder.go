package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Datastore HTTP access (/folder) as vCenter answers it.
//
// dcPath is the datacenter's inventory path from the root folder, not its
// name: "DC0" for a datacenter in the root folder, "NorthAmerica/DC0" for
// one inside folder NorthAmerica (vSphere Web Services SDK Programming
// Guide, "Datastore Access (/folder)",
// https://vdc-download.vmware.com/vmwb-repository/dcr-public/5c1c7b8c-0d1b-4037-af84-5f43787eb378/fab98b61-56a7-4608-992f-818d3b40e4ae/GUID-5A1B6F74-ABDA-4203-85D9-1728AA6764D7.html;
// the FileManager reference says the same: "dcPath is the inventory path to
// the Datacenter containing the Datastore"). dsName must be a datastore of
// that datacenter. Only ESXi defaults dcPath (to ha-datacenter): vCenter
// needs it.
//
// A dcPath that names no datacenter gets 404: vCenter answered "404 Not
// Found" when govc sent a datacenter's bare name for one inside a folder
// (https://github.com/vmware/govmomi/issues/285, fixed in clients by sending
// the path: https://github.com/vmware-archive/rbvmomi/pull/76), and vcsim's
// own /folder handler answers 404 when the datacenter or the datastore is
// not found (govmomi simulator.go, ServeDatastore). An unknown file is 404.
//
// A session vCenter does not know gets 401 with a Basic challenge
// (serveFolder), as for any unauthenticated /folder request; clients such as
// this project's library also renew on 403, which some proxies and older
// releases answer.
//
// Locked files (only with -lock-running-disks): vCenter serves /folder
// through a host of the datastore (NFC); a running VM's current disk layer
// is locked by the host running it, and any other host fails to open it, so
// the request fails with "500 Internal Server Error"
// (https://github.com/vmware/vic/issues/6867: a file held by a powered-on
// VM's host, routed to another host, answered 500;
// https://github.com/vmware/pyvmomi/issues/708: a locked VMFS file "could
// only be downloaded from the host who is the lock owner"). The lab refuses
// whatever host vCenter would pick: it has no notion of one. Only the
// current layer (descriptor and extent) is refused. Its parents, a
// snapshot's layers, are opened read-only: a writer lock keeps others out,
// reader locks let more than one reader in ("A disk that has reader lock
// files can be read by more than one virtual machine but cannot be written
// to", VMware's lock-file documentation,
// https://stuff.mit.edu/afs/sipb/project/vmdialup/archive/i386_linux24.old/lib/vmware-console/help/gsx/lock_files.htm),
// and that is what lets backup proxies open a running VM's snapshot disks.

// statusLocked is what a GET of a file locked by a running VM's host answers.
const statusLocked = http.StatusInternalServerError

// inventoryPath is an entity's inventory path below the root folder, the
// form dcPath takes: "Sites/DC0". ok is false when a parent is missing.
func inventoryPath(ref types.ManagedObjectReference) (string, bool) {
	var names []string
	for {
		obj := simulator.Map.Get(ref)
		entity, isEntity := obj.(mo.Entity)
		if obj == nil || !isEntity {
			return "", false
		}
		var name string
		var parent *types.ManagedObjectReference
		simulator.Map.WithLock(obj, func() {
			name, parent = entity.Entity().Name, entity.Entity().Parent
		})
		if parent == nil { // the root folder is not part of the path
			break
		}
		names = append(names, name)
		ref = *parent
	}
	for i, j := 0, len(names)-1; i < j; i, j = i+1, j-1 {
		names[i], names[j] = names[j], names[i]
	}
	return strings.Join(names, "/"), true
}

// datacenterOf walks an entity's parents to its datacenter.
func datacenterOf(ref types.ManagedObjectReference) (types.ManagedObjectReference, bool) {
	for ref.Type != "Datacenter" {
		obj := simulator.Map.Get(ref)
		entity, isEntity := obj.(mo.Entity)
		if obj == nil || !isEntity {
			return ref, false
		}
		var parent *types.ManagedObjectReference
		simulator.Map.WithLock(obj, func() { parent = entity.Entity().Parent })
		if parent == nil {
			return ref, false
		}
		ref = *parent
	}
	return ref, true
}

// folderDatastoreDir resolves dcPath and dsName (already URL-decoded, compared
// case-sensitively) to the datastore's directory.
func folderDatastoreDir(dcPath, dsName string) (string, error) {
	var dc *types.ManagedObjectReference
	for _, e := range simulator.Map.All("Datacenter") {
		ref := e.Reference()
		if p, ok := inventoryPath(ref); ok && p == dcPath {
			dc = &ref
			break
		}
	}
	if dc == nil {
		return "", fmt.Errorf("no datacenter at inventory path %q", dcPath)
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		var name, url string
		simulator.Map.WithLock(ds, func() { name, url = ds.Name, ds.Info.GetDatastoreInfo().Url })
		if name != dsName {
			continue
		}
		if owner, ok := datacenterOf(ds.Self); ok && owner == *dc {
			return url, nil
		}
	}
	return "", fmt.Errorf("datacenter %q has no datastore %q", dcPath, dsName)
}

// lockedByRunningVM names the powered-on VM whose current disk layer is the
// local file `file` (its descriptor or its extent), or "".
func lockedByRunningVM(file string) string {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		var name string
		var on bool
		var layers []string
		simulator.Map.WithLock(vm, func() {
			name, on = vm.Name, vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
			if on && vm.Config != nil {
				for _, disk := range vmDisks(vm.Config.Hardware.Device) {
					if b := diskBacking(disk); b != nil {
						layers = append(layers, b.FileName)
					}
				}
			}
		})
		for _, layer := range layers {
			f, err := resolveLayer(layer)
			if err == nil && (f.descriptor == file || f.extent == file) {
				return name
			}
		}
	}
	return ""
}

// serveDatastoreFile reads a datastore file for GET/HEAD (with Range). vcsim
// resolves the datacenter and datastore through its own API on every
// request, which made each range read cost far more than vCenter's does.
func (l *lab) serveDatastoreFile(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query() // decoded: "Sites%2FDC0" and "Sites/DC0" are the same path
	dir, err := folderDatastoreDir(query.Get("dcPath"), query.Get("dsName"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	rel := path.Clean("/" + strings.TrimPrefix(r.URL.Path, "/folder/"))
	full := filepath.Join(dir, filepath.FromSlash(rel))
	if l.datastores.kind(query.Get("dsName")) == kindVSAN && isDiskExtent(rel) {
		// A vSAN disk's data is an object, not a file (datastores.go).
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if l.cfg.lockRunningDisks {
		if vm := lockedByRunningVM(full); vm != "" {
			http.Error(w, fmt.Sprintf("Unable to access file %s since it is locked (by running VM %s)", rel, vm), statusLocked)
			return
		}
	}
	f, err := os.Open(full)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil || info.IsDir() {
		http.Error(w, "not a file", http.StatusNotFound)
		return
	}
	http.ServeContent(w, r, info.Name(), info.ModTime(), f)
}

// moveDatacenterIntoFolder puts the datacenter inside the folder path `under`
// ("Sites" or "Sites/West"), creating its folders, as sites organise large
// inventories. It returns the datacenter's new inventory path.
func (l *lab) moveDatacenterIntoFolder(ctx context.Context, dc *object.Datacenter, under string) (string, error) {
	root := object.NewRootFolder(l.inproc)
	folder := root
	for _, name := range strings.Split(under, "/") {
		child, err := folder.CreateFolder(ctx, name)
		if err != nil {
			return "", fmt.Errorf("folder %s: %w", name, err)
		}
		folder = child
	}
	task, err := folder.MoveInto(ctx, []types.ManagedObjectReference{dc.Reference()})
	if err != nil {
		return "", err
	}
	if err := task.Wait(ctx); err != nil {
		return "", fmt.Errorf("move %s into %s: %w", dc.Name(), under, err)
	}
	p, ok := inventoryPath(dc.Reference())
	if !ok {
		return "", fmt.Errorf("datacenter %s has no inventory path", dc.Name())
	}
	return p, nil
}
