package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

func TestVersionClockNeverRepeatsWithinAMicrosecond(t *testing.T) {
	now := time.Date(2026, 11, 26, 2, 15, 38, 123456789, time.UTC)
	clock := newVersionClock(func() time.Time { return now })
	first := clock.next()
	if first != "2026-11-26T02:15:38.123456Z" {
		t.Fatalf("first version %q: want ESXi's form", first)
	}
	seen := map[string]bool{first: true}
	last := first
	for i := 0; i < 1000; i++ {
		if i == 500 {
			now = now.Add(-time.Second) // the clock stepped back
		}
		v := clock.next()
		if seen[v] || v <= last {
			t.Fatalf("version %d is %q after %q", i, v, last)
		}
		seen[v], last = true, v
	}
}

func TestEveryVMStartsWithAChangeVersion(t *testing.T) {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			if vm.Config.ChangeVersion == "" {
				t.Errorf("%s has no changeVersion", vm.Name)
			}
		})
	}
}

// One of each kind of change the lab makes to a VM's configuration; each
// must leave a new changeVersion.
func TestEveryConfigurationChangeGivesANewChangeVersion(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	var snap types.ManagedObjectReference
	steps := []struct {
		what string
		do   func() error
	}{
		{"reconfigure (extraConfig)", func() error {
			return reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{ExtraConfig: []types.BaseOptionValue{&types.OptionValue{Key: "a", Value: "1"}}})
		}},
		{"reconfigure (CBT on)", func() error {
			return reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
		}},
		{"snapshot create", func() (err error) { snap, err = createSnapshot(ctx, c, vm, "one"); return err }},
		{"revert", func() error { return revertSnapshot(ctx, c, snap) }},
		{"power on (a stun: new change ids)", func() error {
			res, err := methods.PowerOnVM_Task(ctx, c, &types.PowerOnVM_Task{This: vm})
			if err != nil {
				return err
			}
			_, err = wait(ctx, c, res.Returnval, nil)
			return err
		}},
		{"CBT reset", func() error { _, err := testLab.cbtReset(name, -1); return err }},
		{"snapshot remove", func() error { return removeSnapshot(ctx, c, snap, false) }},
		{"snapshot remove all", func() error {
			if _, err := createSnapshot(ctx, c, vm, "two"); err != nil {
				return err
			}
			return removeAll(ctx, c, vm)
		}},
		{"consolidate", func() error {
			res, err := methods.ConsolidateVMDisks_Task(ctx, c, &types.ConsolidateVMDisks_Task{This: vm})
			if err != nil {
				return err
			}
			_, err = wait(ctx, c, res.Returnval, nil)
			return err
		}},
		{"relocate (vcsim's)", func() error {
			res, err := methods.RelocateVM_Task(ctx, c, &types.RelocateVM_Task{This: vm})
			if err != nil {
				return err
			}
			_, err = wait(ctx, c, res.Returnval, nil)
			return err
		}},
		{"rename (vcsim's)", func() error {
			res, err := methods.Rename_Task(ctx, c, &types.Rename_Task{This: vm, NewName: name + "-renamed"})
			if err != nil {
				return err
			}
			_, err = wait(ctx, c, res.Returnval, nil)
			return err
		}},
	}
	version := changeVersion(t, ctx, c, vm)
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		next := changeVersion(t, ctx, c, vm)
		if next == version || next == "" {
			t.Errorf("after %s the changeVersion is still %q", step.what, next)
		}
		version = next
	}
}

func TestARevertGivesANewChangeVersionNotTheSnapshots(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	vm := vmRef(t, freshVM(t))
	snap, err := createSnapshot(ctx, c, vm, "one")
	if err != nil {
		t.Fatal(err)
	}
	var frozen string
	s := simulator.Map.Get(snap).(*simulator.VirtualMachineSnapshot)
	simulator.Map.WithLock(s, func() { frozen = s.Config.ChangeVersion })
	before := changeVersion(t, ctx, c, vm)
	if err := revertSnapshot(ctx, c, snap); err != nil {
		t.Fatal(err)
	}
	after := changeVersion(t, ctx, c, vm)
	if after == before || after == frozen {
		t.Errorf("after the revert: %q (before %q, the snapshot's %q)", after, before, frozen)
	}
}

func TestAStaleChangeVersionIsConcurrentAccessAndChangesNothing(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	vm := vmRef(t, freshVM(t))
	stale := changeVersion(t, ctx, c, vm)
	if err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{Annotation: "first"}); err != nil {
		t.Fatal(err)
	}
	current := changeVersion(t, ctx, c, vm)
	err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{
		ChangeVersion: stale, Annotation: "second", NumCPUs: 8,
		ExtraConfig: []types.BaseOptionValue{&types.OptionValue{Key: "stale", Value: "yes"}},
	})
	if faultOf(err) != "ConcurrentAccess" {
		t.Fatalf("a stale changeVersion gave %v", err)
	}
	if !strings.Contains(err.Error(), stale) || !strings.Contains(err.Error(), current) {
		t.Errorf("the message names neither version: %v", err)
	}
	got, rerr := readVM(ctx, c, vm, "config")
	if rerr != nil {
		t.Fatal(rerr)
	}
	if got.Config.Annotation != "first" || got.Config.Hardware.NumCPU == 8 || got.Config.ChangeVersion != current {
		t.Errorf("the refused reconfigure changed the VM: %q, %d CPUs, version %q", got.Config.Annotation, got.Config.Hardware.NumCPU, got.Config.ChangeVersion)
	}
	for _, o := range got.Config.ExtraConfig {
		if o.GetOptionValue().Key == "stale" {
			t.Errorf("the refused reconfigure set extraConfig")
		}
	}
	// The current version works, and so does none at all (no check, as in vSphere).
	if err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{ChangeVersion: current, Annotation: "third"}); err != nil {
		t.Errorf("the current changeVersion: %v", err)
	}
	if err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{Annotation: "fourth"}); err != nil {
		t.Errorf("no changeVersion: %v", err)
	}
}

// Clients that read the same changeVersion and reconfigure at once: exactly
// one wins, every other gets ConcurrentAccess.
func TestRacingReconfiguresWithOneChangeVersionHaveOneWinner(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	vm := vmRef(t, freshVM(t))
	// Each reconfigure dawdles between its check and its change: were the
	// two not one step, every client would pass the check.
	afterVersionCheck.Store(func() { time.Sleep(20 * time.Millisecond) })
	defer afterVersionCheck.Store(func() {})
	for round := 0; round < 3; round++ {
		version := changeVersion(t, ctx, c, vm)
		const clients = 6
		errs := make([]error, clients)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func(i int, c *govmomi.Client) {
				defer wg.Done()
				<-start
				errs[i] = reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{
					ChangeVersion: version,
					ExtraConfig:   []types.BaseOptionValue{&types.OptionValue{Key: "writer", Value: fmt.Sprint(i)}},
				})
			}(i, c)
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch faultOf(err) {
			case "":
				winners++
			case "ConcurrentAccess":
			case "TaskInProgress": // refused while the winner's reconfigure held the VM, as on vSphere
			default:
				t.Errorf("client %d: %v", i, err)
			}
		}
		if winners != 1 {
			t.Errorf("round %d: %d reconfigures won with the same changeVersion", round, winners)
		}
	}
}

func TestClonesAndCreatedVMsGetTheirOwnChangeVersion(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	source := findVM(freshVM(t))
	var folder, pool types.ManagedObjectReference
	var sourceVersion string
	simulator.Map.WithLock(source, func() {
		folder, pool, sourceVersion = *source.Parent, *source.ResourcePool, source.Config.ChangeVersion
	})
	res, err := methods.CloneVM_Task(ctx, c, &types.CloneVM_Task{This: source.Self, Folder: folder, Name: "changeversion-clone",
		Spec: types.VirtualMachineCloneSpec{Location: types.VirtualMachineRelocateSpec{Pool: &pool}}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := wait(ctx, c, res.Returnval, nil)
	if err != nil {
		t.Fatal(err)
	}
	clone := out.(types.ManagedObjectReference)
	if v := changeVersion(t, ctx, c, clone); v == "" || v == sourceVersion {
		t.Errorf("the clone's changeVersion is %q (the source's %q)", v, sourceVersion)
	}
	created, err := methods.CreateVM_Task(ctx, c, &types.CreateVM_Task{This: folder, Pool: pool, Config: types.VirtualMachineConfigSpec{
		Name: "changeversion-created", GuestId: string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + primaryDatastore + "]"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	out, err = wait(ctx, c, created.Returnval, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := changeVersion(t, ctx, c, out.(types.ManagedObjectReference)); v == "" {
		t.Errorf("a VM made by CreateVM_Task has no changeVersion")
	}
}
