package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func TestDatastoresReportTheirKindAsSummaryType(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	want := map[string]string{primaryDatastore: "VMFS", secondaryDatastore: "VMFS", testNFS: "NFS", testVSAN: "vsan"}
	got := map[string]string{}
	for _, e := range simulator.Map.All("Datastore") {
		var ds mo.Datastore
		if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, e.Reference(), []string{"summary"}, &ds); err != nil {
			t.Fatal(err)
		}
		got[ds.Summary.Name] = ds.Summary.Type
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("summary.type by datastore: %v, want %v", got, want)
	}
}

func TestFolderServesNoDiskExtentOnVSAN(t *testing.T) {
	h := labHandler(nil)
	for _, ds := range []string{testVSAN, testNFS} {
		dir, err := datastoreDir(ds)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "folder-kind"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"d.vmdk", "d-flat.vmdk", "d-000001-delta.vmdk", "d-000002-sesparse.vmdk"} {
			if err := os.WriteFile(filepath.Join(dir, "folder-kind", name), []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		ds, file string
		status   int
	}{
		{testVSAN, "d.vmdk", http.StatusOK}, // the descriptor is a file of the namespace
		{testVSAN, "d-flat.vmdk", http.StatusNotFound},
		{testVSAN, "d-000001-delta.vmdk", http.StatusNotFound},
		{testVSAN, "d-000002-sesparse.vmdk", http.StatusNotFound},
		{testNFS, "d-flat.vmdk", http.StatusOK},
		{testNFS, "d-000001-delta.vmdk", http.StatusOK},
	} {
		if w := folderGet(t, h, "folder-kind/"+tc.file, testDCPath, tc.ds, false); w.Code != tc.status {
			t.Errorf("GET %s on %s: %d, want %d", tc.file, tc.ds, w.Code, tc.status)
		}
	}
}

// cloneOnto clones a fresh VM onto a datastore, with CBT on, and returns
// the clone and a snapshot of it whose first disk holds data at 1 MiB.
func cloneOnto(t *testing.T, ctx context.Context, c *govmomi.Client, ds, name string) (types.ManagedObjectReference, types.ManagedObjectReference) {
	t.Helper()
	source := findVM(freshVM(t))
	var folder, pool types.ManagedObjectReference
	simulator.Map.WithLock(source, func() { folder, pool = *source.Parent, *source.ResourcePool })
	var target types.ManagedObjectReference
	for _, e := range simulator.Map.All("Datastore") {
		if e.(*simulator.Datastore).Name == ds {
			target = e.Reference()
		}
	}
	res, err := methods.CloneVM_Task(ctx, c, &types.CloneVM_Task{This: source.Self, Folder: folder, Name: name,
		Spec: types.VirtualMachineCloneSpec{Location: types.VirtualMachineRelocateSpec{Pool: &pool, Datastore: &target}}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := wait(ctx, c, res.Returnval, nil)
	if err != nil {
		t.Fatal(err)
	}
	clone := out.(types.ManagedObjectReference)
	if err := reconfigure(ctx, c, clone, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := testLab.guestWrite(name, 0, 1<<20, []byte("kind")); err != nil {
		t.Fatal(err)
	}
	snap, err := createSnapshot(ctx, c, clone, "star")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range vmDisks(snapshotDevices(t, ctx, c, snap)) {
		if got := datastoreOfPath(diskBacking(d).FileName); got != ds {
			t.Fatalf("the clone's disk %s is not on %s", diskBacking(d).FileName, ds)
		}
	}
	return clone, snap
}

func starAreas(ctx context.Context, c *govmomi.Client, vm, snap types.ManagedObjectReference) ([][2]int64, error) {
	var areas [][2]int64
	for offset := int64(0); offset < testDiskSize; {
		res, err := methods.QueryChangedDiskAreas(ctx, c, &types.QueryChangedDiskAreas{This: vm, Snapshot: &snap, DeviceKey: 2000, StartOffset: offset, ChangeId: "*"})
		if err != nil {
			return nil, err
		}
		for _, a := range res.Returnval.ChangedArea {
			areas = append(areas, [2]int64{a.Start, a.Start + a.Length})
		}
		offset += res.Returnval.Length
	}
	return areas, nil
}

func TestStarAnswersPerDatastoreKind(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	nfsVM, nfsSnap := cloneOnto(t, ctx, c, testNFS, "star-on-nfs")
	areas, err := starAreas(ctx, c, nfsVM, nfsSnap)
	if err != nil || !reflect.DeepEqual(areas, [][2]int64{{0, testDiskSize}}) {
		t.Errorf("NFS: %v %v, want the whole disk in one extent", areas, err)
	}
	vsanVM, vsanSnap := cloneOnto(t, ctx, c, testVSAN, "star-on-vsan")
	areas, err = starAreas(ctx, c, vsanVM, vsanSnap)
	if err != nil || !reflect.DeepEqual(areas, [][2]int64{{0, testDiskSize}}) {
		t.Errorf("vSAN by default: %v %v, want the whole disk in one extent", areas, err)
	}
	// The answer is a per-datastore setting of the control API.
	for _, tc := range []struct {
		answer string
		want   [][2]int64
		fault  string
	}{
		{starFault, nil, "FileFault"},
		{starAllocated, [][2]int64{{1 << 20, 1<<20 + testBlock}}, ""},
		{"", [][2]int64{{0, testDiskSize}}, ""}, // back to the kind's default
	} {
		if _, err := testLab.datastores.setStarAnswer(testVSAN, tc.answer); err != nil {
			t.Fatal(err)
		}
		areas, err := starAreas(ctx, c, vsanVM, vsanSnap)
		if faultOf(err) != tc.fault || !reflect.DeepEqual(areas, tc.want) {
			t.Errorf("vSAN answering %q: %v (%v), want %v (%q)", tc.answer, areas, err, tc.want, tc.fault)
		}
	}
	if _, err := testLab.datastores.setStarAnswer("no-such-ds", starWhole); err == nil {
		t.Errorf("a star answer for a datastore the lab does not have was accepted")
	}
	if _, err := testLab.datastores.setStarAnswer(testVSAN, "some"); err == nil || !strings.Contains(err.Error(), "allocated, whole or fault") {
		t.Errorf("an unknown star answer: %v", err)
	}
}

func TestDatastoreOptionsAreValidated(t *testing.T) {
	for _, tc := range []struct {
		kinds, star nameValues
		ok          bool
	}{
		{nameValues{"primary-ds": "nfs", "vsan-ds": "vsan"}, nameValues{"vsan-ds": "fault"}, true},
		{nameValues{"x": "vvol"}, nil, false},
		{nameValues{"a/b": "nfs"}, nil, false},
		{nil, nameValues{"nowhere": "whole"}, false},
		{nil, nameValues{"primary-ds": "sometimes"}, false},
	} {
		c := config{datastoreKinds: tc.kinds, starAnswers: tc.star}
		if err := validateDatastoreOptions(&c); (err == nil) != tc.ok {
			t.Errorf("kinds %v, star %v: %v", tc.kinds, tc.star, err)
		}
	}
}
