package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"sync"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// These tests race the lab's operations against each other through its SOAP
// endpoint, the way several clients (or one client's threads) would. Run
// them with -race: the point is as much what the race detector reports as
// what the assertions check.

// expected are the faults a client may get when another client changed the
// VM under it: the snapshot it names is gone, its changeVersion is stale.
var expected = map[string]bool{
	"":                       true,
	"ManagedObjectNotFound":  true,
	"NotFound":               true,
	"ConcurrentAccess":       true,
	"InvalidArgument":        true, // QueryChangedDiskAreas on a snapshot that is gone
	"FileFault":              true, // ... or a change id a revert discarded
	"TooManySnapshotLevels":  true,
	"InvalidDeviceOperation": true,
	"InvalidPowerState":      true,
	"TaskInProgress":         true, // another worker's task holds the VM, as on vSphere
}

// tally counts the operations that succeeded, so a run that only ever
// collided (and so tested little) shows up.
type tally struct {
	mu sync.Mutex
	ok map[string]int
}

func (c *tally) add(op string) {
	c.mu.Lock()
	c.ok[op]++
	c.mu.Unlock()
}

type worker struct {
	t    *testing.T
	ok   *tally
	ctx  context.Context
	c    *govmomi.Client
	vm   types.ManagedObjectReference
	name string
	rng  *rand.Rand
	mu   *sync.Mutex // guards snaps, shared by the workers of one VM
	snap *[]types.ManagedObjectReference
}

func (w *worker) check(op string, err error) {
	f := faultOf(err)
	if !expected[f] {
		w.t.Errorf("%s on %s: unexpected %s (%v)", op, w.name, f, err)
	}
	if f == "" {
		w.ok.add(op)
	}
}

func (w *worker) pick() (types.ManagedObjectReference, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(*w.snap) == 0 {
		return types.ManagedObjectReference{}, false
	}
	return (*w.snap)[w.rng.Intn(len(*w.snap))], true
}

// forget drops snapshots the worker learnt are gone, so picks mostly hit live ones.
func (w *worker) forget(gone ...types.ManagedObjectReference) {
	w.mu.Lock()
	defer w.mu.Unlock()
	kept := (*w.snap)[:0]
	for _, s := range *w.snap {
		drop := len(gone) == 0 // none named: all of them
		for _, g := range gone {
			drop = drop || s == g
		}
		if !drop {
			kept = append(kept, s)
		}
	}
	*w.snap = kept
}

func (w *worker) step(i int) {
	switch op := w.rng.Intn(9); op {
	case 0, 1:
		ref, err := createSnapshot(w.ctx, w.c, w.vm, fmt.Sprintf("s-%d-%d", i, w.rng.Int()))
		w.check("create", err)
		if err == nil {
			w.mu.Lock()
			*w.snap = append(*w.snap, ref)
			w.mu.Unlock()
		}
	case 2:
		if ref, ok := w.pick(); ok {
			err := removeSnapshot(w.ctx, w.c, ref, w.rng.Intn(4) == 0)
			w.check("remove", err)
			if f := faultOf(err); f == "" || f == "ManagedObjectNotFound" {
				w.forget(ref)
			}
		}
	case 3:
		if ref, ok := w.pick(); ok {
			err := revertSnapshot(w.ctx, w.c, ref)
			w.check("revert", err)
			if faultOf(err) == "ManagedObjectNotFound" {
				w.forget(ref)
			}
		}
	case 4:
		spec := types.VirtualMachineConfigSpec{ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: fmt.Sprintf("test.key%d", w.rng.Intn(3)), Value: fmt.Sprint(w.rng.Int())},
		}}
		if w.rng.Intn(3) == 0 {
			spec.ChangeTrackingEnabled = types.NewBool(w.rng.Intn(4) != 0)
		}
		w.check("reconfigure", reconfigure(w.ctx, w.c, w.vm, spec))
	case 5:
		data := make([]byte, 1+w.rng.Intn(3*testBlock))
		w.rng.Read(data)
		offset := w.rng.Int63n(testDiskSize - int64(len(data)))
		if _, err := testLab.guestWrite(w.name, w.rng.Intn(2), offset, data); err != nil {
			w.t.Errorf("write to %s: %v", w.name, err)
		}
	case 6:
		_, err := readVM(w.ctx, w.c, w.vm, "config", "snapshot", "rootSnapshot", "runtime", "layoutEx")
		w.check("read", err)
		if ref, ok := w.pick(); ok {
			var out mo.VirtualMachineSnapshot
			err := property.DefaultCollector(w.c.Client).RetrieveOne(w.ctx, ref, []string{"config"}, &out)
			w.check("read snapshot", err)
		}
	case 7:
		if ref, ok := w.pick(); ok {
			_, err := methods.QueryChangedDiskAreas(w.ctx, w.c, &types.QueryChangedDiskAreas{
				This: w.vm, Snapshot: &ref, DeviceKey: 2000, StartOffset: 0, ChangeId: "*",
			})
			w.check("query", err)
		}
	case 8:
		if w.rng.Intn(4) == 0 {
			err := removeAll(w.ctx, w.c, w.vm)
			w.check("remove all", err)
			if err == nil {
				w.forget()
			}
		}
	}
}

// hammer runs workers per VM, each doing steps random operations, while a
// watcher follows every VM's changes through WaitForUpdatesEx.
func hammer(t *testing.T, vms []string, workers, steps int) {
	ctx := testContext(t)
	c := client(t)
	watchCtx, stopWatching := context.WithCancel(ctx)
	var watchers sync.WaitGroup
	for _, name := range vms {
		ref := vmRef(t, name)
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			wc := client(t)
			// Leaf paths, as pyVmomi's and the library's waits use: a filter
			// on a parent ("config") of a changed path makes vcsim read the
			// VM without its lock, a race in vcsim itself (docs/lab.md).
			_ = property.Wait(watchCtx, property.DefaultCollector(wc.Client), ref,
				[]string{"config.changeVersion", "config.hardware.device", "snapshot", "runtime.powerState"},
				func([]types.PropertyChange) bool { return false })
		}()
	}
	for _, name := range vms {
		// CBT on from the start, so changed-area queries have something to answer.
		if err := reconfigure(ctx, c, vmRef(t, name), types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)}); err != nil {
			t.Fatalf("enable CBT on %s: %v", name, err)
		}
	}
	ok := &tally{ok: map[string]int{}}
	var wg sync.WaitGroup
	for v, name := range vms {
		ref := vmRef(t, name)
		var mu sync.Mutex
		var snaps []types.ManagedObjectReference
		for k := 0; k < workers; k++ {
			w := &worker{t: t, ok: ok, ctx: ctx, c: c, vm: ref, name: name, rng: rand.New(rand.NewSource(int64(v*100 + k))), mu: &mu, snap: &snaps}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < steps; i++ {
					w.step(i)
				}
			}()
		}
	}
	wg.Wait()
	stopWatching()
	watchers.Wait()
	t.Logf("operations that succeeded: %v", ok.ok)
	for _, op := range []string{"create", "remove", "revert", "reconfigure", "read", "query"} {
		if ok.ok[op] == 0 {
			t.Errorf("no %s succeeded: the run tested too little", op)
		}
	}
	for _, name := range vms {
		checkConsistent(t, ctx, c, name)
	}
}

// checkConsistent: after the dust settles, every layer the VM and its
// snapshots name exists, and removing every snapshot leaves the base disks
// and no delta behind.
func checkConsistent(t *testing.T, ctx context.Context, c *govmomi.Client, name string) {
	t.Helper()
	vm := findVM(name)
	var files []string
	testLab.mu.Lock()
	simulator.Map.WithLock(vm, func() {
		for _, b := range allBackings(vm) {
			files = append(files, b.FileName)
		}
	})
	testLab.mu.Unlock()
	for _, f := range files {
		layer, err := resolveLayer(f)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if _, err := os.Stat(layer.extent); err != nil {
			t.Errorf("%s names %s, whose extent is missing: %v", name, f, err)
		}
	}
	if err := removeAll(ctx, c, vm.Self); err != nil {
		t.Fatalf("remove all on %s: %v", name, err)
	}
	testLab.mu.Lock()
	defer testLab.mu.Unlock()
	if n := len(testLab.deltas[vm.Self.Value]); n != 0 {
		t.Errorf("%s keeps %d delta layers after removing every snapshot", name, n)
	}
}

func TestConcurrentOperationsOnOneVM(t *testing.T) {
	hammer(t, []string{freshVM(t)}, 4, 25)
}

func TestConcurrentOperationsOnSeveralVMs(t *testing.T) {
	hammer(t, []string{freshVM(t), freshVM(t), freshVM(t)}, 2, 15)
}
