package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const kib = 1 << 10

func TestAChangeIDReportsTheBlocksWrittenAfterIt(t *testing.T) {
	tr := newTracker(1<<20, 64*kib)
	tr.recordWrite(0, 100) // before the change id: not reported
	id, _ := parseChangeID(tr.changeID())
	tr.stun()
	tr.recordWrite(200*kib, 1)           // block 3
	tr.recordWrite(64*kib-1, 2)          // blocks 0 and 1
	tr.recordWrite(1<<20-1, 1)           // the last block
	tr.recordWrite(1<<20+64*kib, 64*kib) // past the end: ignored, as the guest cannot write there
	f := tr.freeze()
	got := f.changedSince(id.seq, 0, 1<<20)
	want := [][2]int64{{0, 128 * kib}, {192 * kib, 256 * kib}, {1<<20 - 64*kib, 1 << 20}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("changed since %d: %v, want %v", id.seq, got, want)
	}
	// An answer covers one window: areas are clipped to it.
	if got := f.changedSince(id.seq, 100*kib, 210*kib); !reflect.DeepEqual(got, [][2]int64{{100 * kib, 128 * kib}, {192 * kib, 210 * kib}}) {
		t.Errorf("clipped to [100K, 210K): %v", got)
	}
	if !f.knows(id) {
		t.Errorf("the frozen state does not know the change id it descends from")
	}
}

// ESXi's rule: a revert keeps the tracking identity, so a change id from the
// branch it discarded is still accepted; only another identity or a future
// epoch is refused.
func TestChangeIDsOfADiscardedBranchStayValidOthersAreUnknown(t *testing.T) {
	tr := newTracker(1<<20, 64*kib)
	atSnapshot := tr.freeze() // a snapshot taken now
	tr.stun()
	tr.recordWrite(0, 1)                         // written on the branch a revert throws away
	discarded, _ := parseChangeID(tr.changeID()) // handed out on that branch
	tr.restore(atSnapshot, 1<<20)
	tr.recordWrite(128*kib, 1) // written after the revert
	f := tr.freeze()
	if !f.knows(discarded) {
		t.Errorf("a change id of the discarded branch is refused after the revert; ESXi accepts it")
	}
	// The answer comes from the restored layer's record: the write after the
	// revert, not block 0, which the revert changed back.
	if got := f.changedSince(discarded.seq, 0, 1<<20); !reflect.DeepEqual(got, [][2]int64{{128 * kib, 192 * kib}}) {
		t.Errorf("changed since the discarded change id: %v", got)
	}
	if first, _ := parseChangeID(fmt.Sprintf("%s/%d", atSnapshot.uuid, atSnapshot.seq)); !f.knows(first) {
		t.Errorf("the snapshot's own change id is unknown after reverting to it")
	}
	other := newTracker(1<<20, 64*kib) // a CBT reset: a new identity
	if id, _ := parseChangeID(other.changeID()); f.knows(id) {
		t.Errorf("a change id of another tracking identity is known")
	}
	if future, _ := parseChangeID(fmt.Sprintf("%s/%d", f.uuid, f.seq+1000)); f.knows(future) {
		t.Errorf("a change id from the future is known")
	}
}

// The hole a revert leaves, through the SOAP endpoint: a change id from
// before the revert is accepted and its answer misses a block whose bytes the
// revert changed, so an incremental copy built on it differs from the source.
func TestARevertLeavesAHoleInTheAnswerSinceAnOlderChangeID(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	if err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)}); err != nil {
		t.Fatal(err)
	}
	user, err := createSnapshot(ctx, c, vm, "user")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testLab.guestWrite(name, 0, 0, []byte("written after the user snapshot")); err != nil {
		t.Fatal(err)
	}
	copied, err := createSnapshot(ctx, c, vm, "last-cycle") // what a replica copied, and its change id
	if err != nil {
		t.Fatal(err)
	}
	since := diskOf(t, snapshotDevices(t, ctx, c, copied), 2000)
	if err := revertSnapshot(ctx, c, user); err != nil {
		t.Fatal(err)
	}
	if _, err := testLab.guestWrite(name, 0, 2*testWindow, []byte{7}); err != nil {
		t.Fatal(err)
	}
	now, err := createSnapshot(ctx, c, vm, "this-cycle")
	if err != nil {
		t.Fatal(err)
	}
	var areas [][2]int64
	for offset := int64(0); offset < testDiskSize; {
		res, err := methods.QueryChangedDiskAreas(ctx, c, &types.QueryChangedDiskAreas{This: vm, Snapshot: &now, DeviceKey: 2000, StartOffset: offset, ChangeId: since.ChangeId})
		if err != nil {
			t.Fatalf("the change id from before the revert is refused at %d: %v", offset, err)
		}
		for _, a := range res.Returnval.ChangedArea {
			areas = append(areas, [2]int64{a.Start, a.Start + a.Length})
		}
		offset += res.Returnval.Length
	}
	if want := [][2]int64{{2 * testWindow, 2*testWindow + testBlock}}; !reflect.DeepEqual(areas, want) {
		t.Fatalf("changed since the older change id: %v, want only the write after the revert %v", areas, want)
	}
	before := layerBytes(t, since.FileName, 0, testBlock)
	after := layerBytes(t, diskOf(t, snapshotDevices(t, ctx, c, now), 2000).FileName, 0, testBlock)
	if bytes.Equal(before, after) {
		t.Fatalf("block 0 is the same before and after the revert: no hole to show")
	}
}

func diskOf(t *testing.T, devices []types.BaseVirtualDevice, key int32) *types.VirtualDiskFlatVer2BackingInfo {
	t.Helper()
	for _, d := range vmDisks(devices) {
		if d.Key == key {
			return diskBacking(d)
		}
	}
	t.Fatalf("no disk %d", key)
	return nil
}

// layerBytes reads a layer's data as the lab keeps it (each layer holds the whole disk).
func layerBytes(t *testing.T, datastorePath string, offset, length int64) []byte {
	t.Helper()
	layer, err := resolveLayer(datastorePath)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(layer.extent)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, length)
	if _, err := f.ReadAt(buf, offset); err != nil {
		t.Fatal(err)
	}
	return buf
}

func TestATrackerFollowsAGrownDisk(t *testing.T) {
	tr := newTracker(1<<20, 64*kib)
	id, _ := parseChangeID(tr.changeID())
	tr.stun()
	tr.resize(2 << 20)
	tr.recordWrite(2<<20-1, 1)
	if got := tr.freeze().changedSince(id.seq, 1<<20, 2<<20); !reflect.DeepEqual(got, [][2]int64{{2<<20 - 64*kib, 2 << 20}}) {
		t.Errorf("a write to the grown part: %v", got)
	}
}

func TestChangeIDsParseAsVSphereWritesThem(t *testing.T) {
	if !regexp.MustCompile(`^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/\d+$`).MatchString(newTracker(1<<20, 64*kib).changeID()) {
		t.Errorf("change id not in vSphere's form")
	}
	for id, ok := range map[string]bool{
		"*": true, "52 9a e5 c5 d0 78 4e 3e-e4 47 b3 1e 00 6b 57 2e/4": true,
		"": false, "52 9a": false, "/4": false, "52 9a/x": false, "52 9a/-1": false,
	} {
		if _, got := parseChangeID(id); got != ok {
			t.Errorf("parseChangeID(%q) ok=%v, want %v", id, got, ok)
		}
	}
}

func TestAllocatedRangesRoundOutToBlocksWithinTheWindow(t *testing.T) {
	segs := [][2]int64{{100, 200}, {64*kib + 10, 64*kib + 20}, {300 * kib, 301 * kib}, {900 * kib, 2000 * kib}}
	got := alignExtents(segs, 64*kib, 0, 1<<20)
	want := [][2]int64{{0, 128 * kib}, {256 * kib, 320 * kib}, {896 * kib, 1 << 20}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("aligned %v, want %v", got, want)
	}
}

// Through the SOAP endpoint: answers cover one window each, a caller loops
// to the capacity, and a call at the capacity is InvalidArgument, as on ESXi.
func TestQueryChangedDiskAreasAnswersOneWindowAtATime(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	if err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)}); err != nil {
		t.Fatal(err)
	}
	first, err := createSnapshot(ctx, c, vm, "first")
	if err != nil {
		t.Fatal(err)
	}
	var changeID string
	for _, d := range vmDisks(snapshotDevices(t, ctx, c, first)) {
		if d.Key == 2000 {
			changeID = diskBacking(d).ChangeId
		}
	}
	for _, off := range []int64{10, testWindow + 5, 3*testWindow - 1} {
		if _, err := testLab.guestWrite(name, 0, off, []byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	second, err := createSnapshot(ctx, c, vm, "second")
	if err != nil {
		t.Fatal(err)
	}
	var areas [][2]int64
	offset, calls := int64(0), 0
	for offset < testDiskSize {
		res, err := methods.QueryChangedDiskAreas(ctx, c, &types.QueryChangedDiskAreas{This: vm, Snapshot: &second, DeviceKey: 2000, StartOffset: offset, ChangeId: changeID})
		if err != nil {
			t.Fatalf("at %d: %v", offset, err)
		}
		info := res.Returnval
		if info.StartOffset != offset || info.Length <= 0 || info.Length > testWindow {
			t.Fatalf("answer at %d covers [%d, +%d)", offset, info.StartOffset, info.Length)
		}
		for _, a := range info.ChangedArea {
			areas = append(areas, [2]int64{a.Start, a.Start + a.Length})
		}
		offset += info.Length
		calls++
	}
	want := [][2]int64{{0, testBlock}, {testWindow, testWindow + testBlock}, {3*testWindow - testBlock, 3 * testWindow}}
	if !reflect.DeepEqual(areas, want) || calls != testDiskSize/testWindow {
		t.Errorf("%d calls found %v, want %d calls and %v", calls, areas, testDiskSize/testWindow, want)
	}
	_, err = methods.QueryChangedDiskAreas(ctx, c, &types.QueryChangedDiskAreas{This: vm, Snapshot: &second, DeviceKey: 2000, StartOffset: testDiskSize, ChangeId: changeID})
	if faultOf(err) != "InvalidArgument" {
		t.Errorf("a query at the capacity: %v", err)
	}
}

// snapshotDevices reads a snapshot's frozen device list, as a client does.
func snapshotDevices(t *testing.T, ctx context.Context, c *govmomi.Client, ref types.ManagedObjectReference) []types.BaseVirtualDevice {
	t.Helper()
	var s mo.VirtualMachineSnapshot
	if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, ref, []string{"config.hardware.device"}, &s); err != nil {
		t.Fatal(err)
	}
	return s.Config.Hardware.Device
}
