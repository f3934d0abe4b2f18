package main

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// A VM runs one operation at a time. vSphere's TaskInProgress ("thrown if
// the virtual machine is busy") is listed for ReconfigVM_Task,
// CreateSnapshot_Task, RemoveSnapshot_Task, RevertToSnapshot_Task,
// RevertToCurrentSnapshot_Task, RemoveAllSnapshots_Task,
// ConsolidateVMDisks_Task, PowerOnVM_Task, PowerOffVM_Task, Destroy_Task and
// CloneVM_Task (vSphere Web Services API reference, vim.fault.TaskInProgress,
// "Thrown by"); its `task` property names the operation in the way. The
// second task is created and fails with the fault, as govmomi's own
// simulator example models a busy VM (simulator/example_extend_test.go,
// BusyVM.PowerOffVMTask: a task whose result is &types.TaskInProgress{}).
//
// A clone only reads its source: vCenter runs several clones of one VM or
// template at once (deploying many VMs from one template is the common case),
// but refuses to change a VM while it is being cloned. So a clone holds a
// shared hold on its source and every other task an exclusive one.
const taskInProgressMessage = "Another task is already in progress."

type busyHold struct {
	task      types.ManagedObjectReference // the first holder: what TaskInProgress names
	exclusive bool
	holders   int
}

// busyBook tracks the VMs that have a task running, by moref value.
type busyBook struct {
	mu   sync.Mutex
	held map[string]*busyHold
}

func newBusyBook() *busyBook { return &busyBook{held: map[string]*busyHold{}} }

// acquire takes a hold on vm for task, or returns the task in the way.
func (b *busyBook) acquire(vm string, task types.ManagedObjectReference, exclusive bool) (types.ManagedObjectReference, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.held[vm]
	if h == nil {
		b.held[vm] = &busyHold{task: task, exclusive: exclusive, holders: 1}
		return task, true
	}
	if exclusive || h.exclusive {
		return h.task, false
	}
	h.holders++
	return task, true
}

func (b *busyBook) release(vm string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h := b.held[vm]; h != nil {
		h.holders--
		if h.holders <= 0 {
			delete(b.held, vm)
		}
	}
}

// running returns the task holding vm, if any.
func (b *busyBook) running(vm string) (types.ManagedObjectReference, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h := b.held[vm]; h != nil {
		return h.task, true
	}
	return types.ManagedObjectReference{}, false
}

func taskInProgress(holder types.ManagedObjectReference) *methodFault {
	return newFault(&types.TaskInProgress{Task: holder}, taskInProgressMessage)
}

// startVMTask starts a task the lab carries out on vm: it fails with TaskInProgress while another
// task holds the VM, otherwise holds it until work returns. An armed
// slow-task fault for the method makes the task run that much longer first,
// holding the VM, so tests can overlap two tasks as they overlap on vSphere.
func (l *lab) startVMTask(vm *simulator.VirtualMachine, method, id string, exclusive bool, work func(func(int32)) (types.AnyType, *methodFault)) types.ManagedObjectReference {
	var delay time.Duration
	admit := func(task types.ManagedObjectReference) *methodFault {
		if holder, ok := l.busy.acquire(vm.Self.Value, task, exclusive); !ok {
			return taskInProgress(holder)
		}
		if f := l.faults.take(func(f *armedFault) bool { return f.Kind == faultSlowTask && f.names(method) }); f != nil {
			delay = time.Duration(f.DelayMS) * time.Millisecond
		}
		return nil
	}
	return startTask(vm, method, id, admit, func(progress func(int32)) (types.AnyType, *methodFault) {
		defer l.busy.release(vm.Self.Value)
		if delay > 0 {
			time.Sleep(delay)
		}
		return work(progress)
	})
}

// refuseBusy answers a task method on a VM that vcsim carries out itself
// (PowerOffVM_Task, RelocateVM_Task, ...) with a task failing with
// TaskInProgress while a lab task holds the VM. vcsim's own tasks finish
// before their call returns, so they need no hold of their own.
func (l *lab) refuseBusy(w http.ResponseWriter, method *simulator.Method) bool {
	if !isTaskMethod(method.Name) || method.This.Type != "VirtualMachine" {
		return false
	}
	vm, _ := simulator.Map.Get(method.This).(*simulator.VirtualMachine)
	if vm == nil {
		return false
	}
	holder, busy := l.busy.running(vm.Self.Value)
	if !busy {
		return false
	}
	fault := taskInProgress(holder)
	id := taskDescriptionID(method.Name)
	writeTask(w, method.Name, startTask(vm, method.Name, id, nil, func(func(int32)) (types.AnyType, *methodFault) { return nil, fault }))
	return true
}

// VMware Tools, per VM. The guest's state is one of these; Tools runs only
// while the VM is powered on (a powered-off VM reports guestToolsNotRunning).
// Values of vim.vm.GuestInfo.ToolsRunningStatus and of the (deprecated but
// still published) VirtualMachineToolsStatus enum: vSphere Web Services API
// reference, VirtualMachineToolsRunningStatus and VirtualMachineToolsStatus.
const (
	toolsRunning      = "running"
	toolsNotRunning   = "notRunning"
	toolsNotInstalled = "notInstalled"
	labToolsVersion   = "12352" // VMware Tools 12.3.0's version number, as guest.toolsVersion reports it
)

var toolsStates = map[string]bool{toolsRunning: true, toolsNotRunning: true, toolsNotInstalled: true}

// quiesceFaults are the faults a quiesce fault may inject: the two
// SnapshotFault subtypes vSphere documents for a failed quiesce
// (FilesystemQuiesceFault: I/O held off too long; ApplicationQuiesceFault: a
// pre-freeze script failed; vSphere Web Services API reference).
var quiesceFaults = map[string]bool{"FilesystemQuiesceFault": true, "ApplicationQuiesceFault": true}

// toolsState is the guest's Tools state; lab VMs have Tools installed and
// started, as a real guest with open-vm-tools does. Callers hold l.mu.
func (l *lab) toolsState(vm *simulator.VirtualMachine) string {
	if s, ok := l.tools[vm.Self.Value]; ok {
		return s
	}
	return toolsRunning
}

// publishTools sets the VM's guest Tools properties from its state and power
// state. Callers hold l.mu and the VM's lock.
func (l *lab) publishTools(vm *simulator.VirtualMachine) {
	state := l.toolsState(vm)
	on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
	running := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning
	status := types.VirtualMachineToolsStatusToolsNotRunning
	version, versionStatus := labToolsVersion, types.VirtualMachineToolsVersionStatusGuestToolsCurrent
	switch {
	case state == toolsNotInstalled:
		status = types.VirtualMachineToolsStatusToolsNotInstalled
		version, versionStatus = "0", types.VirtualMachineToolsVersionStatusGuestToolsNotInstalled
	case state == toolsRunning && on:
		running = types.VirtualMachineToolsRunningStatusGuestToolsRunning
		status = types.VirtualMachineToolsStatusToolsOk
	}
	if vm.Guest != nil && vm.Guest.ToolsRunningStatus == string(running) && vm.Guest.ToolsStatus == status &&
		vm.Guest.ToolsVersionStatus2 == string(versionStatus) {
		return
	}
	ownVM(vm)
	if vm.Guest == nil {
		vm.Guest = &types.GuestInfo{}
	}
	if vm.Summary.Guest == nil {
		vm.Summary.Guest = &types.VirtualMachineGuestSummary{}
	}
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: string(running)},
		{Name: "guest.toolsStatus", Val: status},
		{Name: "guest.toolsVersion", Val: version},
		{Name: "guest.toolsVersionStatus2", Val: string(versionStatus)},
		{Name: "summary.guest.toolsRunningStatus", Val: string(running)},
		{Name: "summary.guest.toolsStatus", Val: status},
		{Name: "summary.guest.toolsVersionStatus2", Val: string(versionStatus)},
	})
}

// refreshTools republishes a VM's Tools properties after vcsim changed it
// (a power operation, say).
func (l *lab) refreshTools(ref types.ManagedObjectReference) {
	vm, _ := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if vm == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	simulator.Map.WithLock(vm, func() { l.publishTools(vm) })
}

// setTools changes the guest's Tools state (the lab's "tools" endpoint).
func (l *lab) setTools(nameOrRef, state string) (map[string]interface{}, error) {
	if !toolsStates[state] {
		return nil, fmt.Errorf("tools state must be running, notRunning or notInstalled, not %q", state)
	}
	vm := findVM(nameOrRef)
	if vm == nil {
		return nil, fmt.Errorf("no VM %q", nameOrRef)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tools[vm.Self.Value] = state
	res := map[string]interface{}{"vm": vm.Self.Value, "state": state}
	simulator.Map.WithLock(vm, func() {
		l.publishTools(vm)
		if state == toolsRunning && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
			l.applyGuest(vm) // Tools started: a pending customization runs now
		}
		res["name"] = vm.Name
		res["tools_running_status"] = vm.Guest.ToolsRunningStatus
		res["tools_status"] = vm.Guest.ToolsStatus
	})
	return res, nil
}

// quiesceFault tells why a quiesced snapshot of vm cannot be taken, if it
// cannot. vSphere quiesces only a powered-on VM ("If TRUE and the virtual
// machine is powered on when the snapshot is taken, VMware Tools is used to
// quiesce the file system": CreateSnapshot_Task, parameter quiesce), through
// VMware Tools; without running Tools the task fails with "Cannot quiesce
// this virtual machine because VMware Tools is not currently available."
// (the message users report, e.g. vmware/open-vm-tools#297), a
// ToolsUnavailable: "thrown when an operation fails to contact VMware Tools
// running inside the virtual machine" (API reference). vSphere rolls the
// whole snapshot back (FilesystemQuiesceFault's description), so nothing is
// created. Callers hold l.mu and the VM's lock.
func (l *lab) quiesceFault(vm *simulator.VirtualMachine) *methodFault {
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		return nil
	}
	if l.toolsState(vm) != toolsRunning {
		return newFault(&types.ToolsUnavailable{}, "Cannot quiesce this virtual machine because VMware Tools is not currently available.")
	}
	armed := l.faults.take(func(f *armedFault) bool { return f.Kind == faultQuiesce })
	if armed == nil {
		return nil
	}
	f, _ := faultByName(armed.Fault)
	msg := armed.Message
	if msg == "" {
		msg = "injected by the lab: " + armed.Fault
		if armed.Fault == "FilesystemQuiesceFault" {
			msg = "Cannot create a quiesced snapshot because the create snapshot operation exceeded the time limit for holding off I/O in the frozen virtual machine."
		}
	}
	return &methodFault{fault: f, msg: msg}
}
