package main

import (
	"testing"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

func TestASecondTaskOnABusyVMFailsWithTaskInProgress(t *testing.T) {
	ctx, c := testContext(t), client(t)
	vm := vmRef(t, freshVM(t))
	if _, err := testLab.faults.arm(armedFault{Kind: faultSlowTask, Method: "CreateSnapshot_Task", DelayMS: 1500, Remaining: 1}); err != nil {
		t.Fatal(err)
	}
	first, err := methods.CreateSnapshot_Task(ctx, c, &types.CreateSnapshot_Task{This: vm, Name: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := methods.ReconfigVM_Task(ctx, c, &types.ReconfigVM_Task{This: vm, Spec: types.VirtualMachineConfigSpec{Annotation: "x"}})
	_, err = wait(ctx, c, second.Returnval, err)
	if faultOf(err) != "TaskInProgress" {
		t.Fatalf("a reconfigure during a snapshot gave %q (%v), not TaskInProgress", faultOf(err), err)
	}
	if f, ok := err.(interface{ Fault() types.BaseMethodFault }); ok {
		if tip, _ := f.Fault().(*types.TaskInProgress); tip == nil || tip.Task != first.Returnval {
			t.Errorf("TaskInProgress names %v, not the running snapshot task %v", tip, first.Returnval)
		}
	}
	off, err := methods.PowerOffVM_Task(ctx, c, &types.PowerOffVM_Task{This: vm})
	if _, err = wait(ctx, c, off.Returnval, err); faultOf(err) != "TaskInProgress" {
		t.Fatalf("a power-off during a snapshot gave %q, not TaskInProgress", faultOf(err))
	}
	if _, err := wait(ctx, c, first.Returnval, nil); err != nil {
		t.Fatalf("the slow snapshot failed: %v", err)
	}
	if err := reconfigure(ctx, c, vm, types.VirtualMachineConfigSpec{Annotation: "y"}); err != nil {
		t.Fatalf("a reconfigure once the snapshot ended: %v", err)
	}
}

func TestQuiesceNeedsRunningTools(t *testing.T) {
	ctx, c := testContext(t), client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	got, err := readVM(ctx, c, vm, "guest.toolsRunningStatus", "guest.toolsStatus")
	if err != nil || got.Guest.ToolsRunningStatus != "guestToolsRunning" || got.Guest.ToolsStatus != types.VirtualMachineToolsStatusToolsOk {
		t.Fatalf("a powered-on lab VM's Tools: %+v (%v), want running", got.Guest, err)
	}
	quiesce := func() error {
		res, err := methods.CreateSnapshot_Task(ctx, c, &types.CreateSnapshot_Task{This: vm, Name: "q", Quiesce: true})
		_, err = wait(ctx, c, res.Returnval, err)
		return err
	}
	if _, err := testLab.faults.arm(armedFault{Kind: faultQuiesce, Fault: "FilesystemQuiesceFault", Remaining: 1}); err != nil {
		t.Fatal(err)
	}
	if f := faultOf(quiesce()); f != "FilesystemQuiesceFault" {
		t.Fatalf("an armed quiesce fault gave %q", f)
	}
	if _, err := testLab.setTools(name, toolsNotRunning); err != nil {
		t.Fatal(err)
	}
	got, _ = readVM(ctx, c, vm, "guest.toolsRunningStatus", "snapshot")
	if got.Guest.ToolsRunningStatus != "guestToolsNotRunning" {
		t.Errorf("toolsRunningStatus after stopping Tools: %q", got.Guest.ToolsRunningStatus)
	}
	if got.Snapshot != nil {
		t.Errorf("a failed quiesce left a snapshot: %+v", got.Snapshot)
	}
	if f := faultOf(quiesce()); f != "ToolsUnavailable" {
		t.Fatalf("quiesce without Tools gave %q, not ToolsUnavailable", f)
	}
	if _, err := createSnapshot(ctx, c, vm, "crash-consistent"); err != nil {
		t.Fatalf("a snapshot without quiesce needs no Tools: %v", err)
	}
}
