package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// openSession registers a data-path session through the control API, as the VDDK stand-in does.
func openSession(t *testing.T, vm, file string) int {
	t.Helper()
	u := *testURL
	u.Path = "/lab/v1/disk-sessions"
	u.RawQuery = url.Values{"vm": {vm}, "file": {file}, "readonly": {"1"}}.Encode()
	res, err := http.Post(u.String(), "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var d dataSession
	if err := json.NewDecoder(res.Body).Decode(&d); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("open a session on %s: HTTP %d %v", file, res.StatusCode, err)
	}
	return d.ID
}

func closeSession(t *testing.T, id int) {
	t.Helper()
	u := *testURL
	u.Path = "/lab/v1/disk-sessions"
	u.RawQuery = "id=" + strconv.Itoa(id)
	req, _ := http.NewRequest(http.MethodDelete, u.String(), nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("close session %d: HTTP %d", id, res.StatusCode)
	}
}

func TestAnOpenSnapshotLayerCannotBeRemovedUntilItsSessionCloses(t *testing.T) {
	ctx, c := testContext(t), client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	snap, err := createSnapshot(ctx, c, vm, "cycle")
	if err != nil {
		t.Fatal(err)
	}
	layer := diskOf(t, snapshotDevices(t, ctx, c, snap), 2000).FileName
	id := openSession(t, name, layer)
	err = removeSnapshot(ctx, c, snap, false)
	if faultOf(err) != "FileLocked" {
		t.Fatalf("removing a snapshot whose layer a proxy reads gave %q (%v), not FileLocked", faultOf(err), err)
	}
	if f, ok := err.(interface{ Fault() types.BaseMethodFault }); ok {
		if fl, _ := f.Fault().(*types.FileLocked); fl == nil || fl.File != layer {
			t.Errorf("FileLocked names %+v, not %s", f.Fault(), layer)
		}
	}
	if err := removeAll(ctx, c, vm); faultOf(err) != "FileLocked" {
		t.Fatalf("removing all snapshots over an open layer gave %q", faultOf(err))
	}
	if _, err := createSnapshot(ctx, c, vm, "another"); err != nil {
		t.Fatalf("a snapshot over layers no session holds: %v", err)
	}
	closeSession(t, id)
	if err := removeSnapshot(ctx, c, snap, false); err != nil {
		t.Fatalf("removing the snapshot once its session closed: %v", err)
	}
}

func TestAMethodFaultInjectsFileLockedAndSnapshotLocked(t *testing.T) {
	ctx, c := testContext(t), client(t)
	vm := vmRef(t, freshVM(t))
	snap, err := createSnapshot(ctx, c, vm, "s")
	if err != nil {
		t.Fatal(err)
	}
	for _, fault := range []string{"SnapshotLocked", "FileLocked"} {
		if _, err := testLab.faults.arm(armedFault{Kind: faultMethod, Method: "RemoveSnapshot_Task", Fault: fault, Remaining: 2}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if got := faultOf(removeSnapshot(ctx, c, snap, false)); got != fault {
				t.Fatalf("try %d with %s armed gave %q", i, fault, got)
			}
		}
	}
	if err := removeSnapshot(ctx, c, snap, false); err != nil {
		t.Fatalf("the removal once the faults were spent: %v", err)
	}
}

func TestStorageVMotionMovesEveryLayerAndKeepsChangeIDs(t *testing.T) {
	ctx, c := testContext(t), client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	if err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := testLab.guestWrite(name, 0, 0, []byte("before the snapshot")); err != nil {
		t.Fatal(err)
	}
	snap, err := createSnapshot(ctx, c, vm, "cycle")
	if err != nil {
		t.Fatal(err)
	}
	since := diskOf(t, snapshotDevices(t, ctx, c, snap), 2000)
	if _, err := testLab.guestWrite(name, 0, testWindow, []byte("after the snapshot")); err != nil {
		t.Fatal(err)
	}
	before, err := readVM(ctx, c, vm, "config.hardware.device")
	if err != nil {
		t.Fatal(err)
	}
	oldCurrent := diskOf(t, before.Config.Hardware.Device, 2000)
	secondary := findDatastore(t, secondaryDatastore)

	id := openSession(t, name, since.FileName)
	if err := relocate(ctx, c, vm, types.VirtualMachineRelocateSpec{Datastore: &secondary}); faultOf(err) != "FileLocked" {
		t.Fatalf("a Storage vMotion over an open layer gave %q (%v), not FileLocked", faultOf(err), err)
	}
	closeSession(t, id)
	if err := relocate(ctx, c, vm, types.VirtualMachineRelocateSpec{Datastore: &secondary}); err != nil {
		t.Fatalf("Storage vMotion: %v", err)
	}

	after, err := readVM(ctx, c, vm, "config.hardware.device", "datastore", "summary.config.vmPathName")
	if err != nil {
		t.Fatal(err)
	}
	current := diskOf(t, after.Config.Hardware.Device, 2000)
	frozen := diskOf(t, snapshotDevices(t, ctx, c, snap), 2000)
	for _, b := range []*types.VirtualDiskFlatVer2BackingInfo{current, current.Parent, frozen} {
		if datastoreOf(b.FileName) != secondaryDatastore || b.Datastore == nil || *b.Datastore != secondary {
			t.Errorf("a layer stayed behind: %s on %v", b.FileName, b.Datastore)
		}
	}
	if current.Uuid != oldCurrent.Uuid || current.ChangeId != oldCurrent.ChangeId {
		t.Errorf("uuid/changeId %s/%s became %s/%s: vSphere 6.0+ keeps both", oldCurrent.Uuid, oldCurrent.ChangeId, current.Uuid, current.ChangeId)
	}
	if len(after.Datastore) != 1 || after.Datastore[0] != secondary || datastoreOf(after.Summary.Config.VmPathName) != secondaryDatastore {
		t.Errorf("the VM's datastores %v, home %s", after.Datastore, after.Summary.Config.VmPathName)
	}
	for _, p := range []string{oldCurrent.FileName, since.FileName} {
		old, _ := resolveLayer(p)
		if _, err := os.Stat(old.extent); !os.IsNotExist(err) {
			t.Errorf("%s still on the old datastore (%v)", p, err)
		}
	}
	if got := layerBytes(t, frozen.FileName, 0, 19); !bytes.Equal(got, []byte("before the snapshot")) {
		t.Errorf("the moved snapshot layer reads %q", got)
	}
	if got := layerBytes(t, current.FileName, testWindow, 18); !bytes.Equal(got, []byte("after the snapshot")) {
		t.Errorf("the moved current layer reads %q", got)
	}
	// The change id from before the move still answers, with the write since.
	now, err := createSnapshot(ctx, c, vm, "next")
	if err != nil {
		t.Fatal(err)
	}
	res, err := methods.QueryChangedDiskAreas(ctx, c, &types.QueryChangedDiskAreas{This: vm, Snapshot: &now, DeviceKey: 2000, StartOffset: testWindow, ChangeId: since.ChangeId})
	if err != nil {
		t.Fatalf("the change id from before the move: %v", err)
	}
	if len(res.Returnval.ChangedArea) != 1 || res.Returnval.ChangedArea[0].Start != testWindow {
		t.Errorf("changed since the move's change id: %+v", res.Returnval.ChangedArea)
	}
	// Guest writes and snapshot removal work on the new datastore.
	if _, err := testLab.guestWrite(name, 0, 0, []byte("moved")); err != nil {
		t.Fatal(err)
	}
	if err := removeAll(ctx, c, vm); err != nil {
		t.Fatalf("removing the snapshots after the move: %v", err)
	}
}

func findDatastore(t *testing.T, name string) types.ManagedObjectReference {
	t.Helper()
	for _, e := range simulator.Map.All("Datastore") {
		if ds := e.(*simulator.Datastore); ds.Name == name {
			return ds.Self
		}
	}
	t.Fatalf("no datastore %s", name)
	return types.ManagedObjectReference{}
}

func relocate(ctx context.Context, c *govmomi.Client, vm types.ManagedObjectReference, spec types.VirtualMachineRelocateSpec) error {
	t, err := object.NewVirtualMachine(c.Client, vm).Relocate(ctx, spec, types.VirtualMachineMovePriorityDefaultPriority)
	if err != nil {
		return err
	}
	_, err = wait(ctx, c, t.Reference(), nil)
	return err
}
