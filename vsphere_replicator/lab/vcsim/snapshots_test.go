package main

import (
	"fmt"
	"math/rand"
	"os"
	"strings"
	"testing"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// A task queued against a snapshot may run after another task removed it
// (the end-to-end run that answered "internal lab error: runtime error:
// invalid memory address" did exactly that): vSphere answers
// ManagedObjectNotFound.
func TestATaskOnASnapshotRemovedMeanwhileFindsItGone(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	vm := findVM(freshVM(t))
	ref, err := createSnapshot(ctx, c, vm.Self, "doomed")
	if err != nil {
		t.Fatal(err)
	}
	snap := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot) // as serveExtended resolves it
	if _, fault := testLab.removeAllSnapshots(vm); fault != nil {
		t.Fatal(fault.msg)
	}
	for what, run := range map[string]func() *methodFault{
		"remove":               func() *methodFault { _, f := testLab.removeSnapshot(snap, false); return f },
		"remove with children": func() *methodFault { _, f := testLab.removeSnapshot(snap, true); return f },
		"revert":               func() *methodFault { _, f := testLab.revert(vm, snap, false); return f },
		"revert to current":    func() *methodFault { _, f := testLab.revert(vm, nil, false); return f },
	} {
		fault := run()
		if fault == nil {
			t.Errorf("%s of a removed snapshot succeeded", what)
			continue
		}
		switch fault.fault.(type) {
		case *types.ManagedObjectNotFound, *types.NotFound:
		default:
			t.Errorf("%s of a removed snapshot: %T %s", what, fault.fault, fault.msg)
		}
	}
}

// A revert that starts a second branch leaves the removed snapshot's disk as
// the branches' shared parent; once no snapshot is left the VM must still
// end on its base disks, with no delta behind, as "Delete All" does on ESXi.
func TestRemovingEverySnapshotAfterABranchLeavesTheBaseDisks(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	s1, err := createSnapshot(ctx, c, vm, "s1")
	must(err)
	_, err = createSnapshot(ctx, c, vm, "s2")
	must(err)
	must(revertSnapshot(ctx, c, s1))
	_, err = createSnapshot(ctx, c, vm, "s3") // a second child of s1
	must(err)
	must(removeSnapshot(ctx, c, s1, false)) // its disk has two children: it stays
	_, err = createSnapshot(ctx, c, vm, "s4")
	must(err)
	if _, err := testLab.guestWrite(name, 0, 4096, []byte("after s4")); err != nil {
		t.Fatal(err)
	}
	must(removeAll(ctx, c, vm))
	got, err := readVM(ctx, c, vm, "config.hardware.device")
	must(err)
	for _, d := range vmDisks(got.Config.Hardware.Device) {
		b := diskBacking(d)
		if b.Parent != nil || strings.Contains(b.FileName, "-0000") {
			t.Errorf("disk %d is still on %s with no snapshot left", d.Key, b.FileName)
		}
	}
	base, _ := resolveLayer(fmt.Sprintf("[%s] %s/%s.vmdk", primaryDatastore, name, name))
	data := make([]byte, 8)
	f, err := os.Open(base.extent)
	must(err)
	defer f.Close()
	if _, err := f.ReadAt(data, 4096); err != nil || string(data) != "after s4" {
		t.Errorf("the base disk lost the last write: %q, %v", data, err)
	}
	testLab.mu.Lock()
	defer testLab.mu.Unlock()
	if n := len(testLab.deltas[vm.Value]); n != 0 {
		t.Errorf("%d delta layers left", n)
	}
}

// Random sequences of snapshot operations, one at a time: every layer the VM
// and its snapshots name exists after each, and removing every snapshot
// leaves no delta.
func TestRandomSnapshotSequencesKeepEveryLayer(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	name := freshVM(t)
	vm := findVM(name)
	for seed := int64(0); seed < 8; seed++ {
		rng := rand.New(rand.NewSource(seed))
		var snaps []types.ManagedObjectReference
		var done []string
		for i := 0; i < 12; i++ {
			var err error
			switch op := rng.Intn(4); {
			case op <= 1 || len(snaps) == 0:
				var s types.ManagedObjectReference
				if s, err = createSnapshot(ctx, c, vm.Self, fmt.Sprint("s", i)); err == nil {
					snaps = append(snaps, s)
				}
				done = append(done, "create "+s.Value)
			case op == 2:
				s, children := snaps[rng.Intn(len(snaps))], rng.Intn(3) == 0
				err = removeSnapshot(ctx, c, s, children)
				done = append(done, fmt.Sprintf("remove %s children=%v", s.Value, children))
			default:
				s := snaps[rng.Intn(len(snaps))]
				err = revertSnapshot(ctx, c, s)
				done = append(done, "revert "+s.Value)
			}
			if f := faultOf(err); f != "" && f != "ManagedObjectNotFound" {
				t.Fatalf("seed %d, after %v: %v", seed, done, err)
			}
			if _, werr := testLab.guestWrite(name, rng.Intn(2), rng.Int63n(testDiskSize-512), make([]byte, 512)); werr != nil {
				t.Fatal(werr)
			}
			if missing := missingLayers(vm); len(missing) > 0 {
				t.Fatalf("seed %d, after %v: %v missing", seed, done, missing)
			}
		}
		if err := removeAll(ctx, c, vm.Self); err != nil {
			t.Fatalf("seed %d: remove all after %v: %v", seed, done, err)
		}
		testLab.mu.Lock()
		n := len(testLab.deltas[vm.Self.Value])
		testLab.mu.Unlock()
		if n != 0 {
			t.Fatalf("seed %d: %d delta layers left after %v", seed, n, done)
		}
	}
}

// missingLayers lists the layers the VM or its snapshots name whose extent is not there.
func missingLayers(vm *simulator.VirtualMachine) []string {
	testLab.mu.Lock()
	defer testLab.mu.Unlock()
	var missing []string
	simulator.Map.WithLock(vm, func() {
		for _, b := range allBackings(vm) {
			layer, err := resolveLayer(b.FileName)
			if err != nil {
				missing = append(missing, b.FileName)
				continue
			}
			if _, err := os.Stat(layer.extent); err != nil {
				missing = append(missing, b.FileName)
			}
		}
	})
	return missing
}
