package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// config.changeVersion, vCenter's optimistic concurrency for a VM's
// configuration. The vSphere API reference (vim.vm.ConfigInfo, and
// vim.vm.ConfigSpec for the request side):
//
//	"The changeVersion is a unique identifier for a given version of the
//	configuration. Each change to the configuration will update this value.
//	This is typically implemented as an ever increasing count or a
//	time-stamp. However, a client should always treat this as an opaque
//	string. If specified, the changes will only be applied if the current
//	changeVersion matches the specified changeVersion."
//
// https://developer.broadcom.com/xapis/vmware-storage-policy-api/8.0u2/vim.vm.ConfigInfo.html
// ReconfigVM_Task answers a stale one with vim.fault.ConcurrentAccess, "thrown
// when an operation fails because another operation has modified the
// datastructure":
// https://developer.broadcom.com/xapis/vsphere-web-services-api/8.0U3/vim.fault.ConcurrentAccess.html
//
// vcsim keeps no changeVersion at all. ESXi's is the time of the change with
// microseconds ("2026-11-26T02:15:38.123456Z"); the lab's has that form and
// comes from one lab-wide clock that never hands out the same value twice,
// so two changes within one microsecond still differ.

const changeVersionLayout = "2006-01-02T15:04:05.000000Z"

type versionClock struct {
	mu   sync.Mutex
	now  func() time.Time
	last time.Time
}

func newVersionClock(now func() time.Time) *versionClock { return &versionClock{now: now} }

// next returns a version later than every one handed out before.
func (c *versionClock) next() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now().UTC().Truncate(time.Microsecond)
	if !t.After(c.last) {
		t = c.last.Add(time.Microsecond)
	}
	c.last = t
	return t.Format(changeVersionLayout)
}

// configChanged gives the VM a new changeVersion: every change the lab makes
// to a VM's configuration calls it, under the VM's lock, before publishVM.
func (l *lab) configChanged(vm *simulator.VirtualMachine) {
	vm.Config.ChangeVersion = l.versions.next()
}

// newVMConfig gives a VM a new changeVersion and publishes it: its first,
// when it was just created (by the lab, a clone, or a client's
// CreateVM_Task), or after vcsim changed its configuration. Callers hold its
// lock.
func (l *lab) newVMConfig(vm *simulator.VirtualMachine) {
	ownVM(vm)
	l.configChanged(vm)
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.changeVersion", Val: vm.Config.ChangeVersion}})
}

// checkChangeVersion is ReconfigVM_Task's guard: a spec that names a
// changeVersion other than the current one changes nothing. An empty one is
// no guard at all, as in vSphere. The caller holds the VM's lock for the
// check and the change that follows it, so two clients that read the same
// version cannot both win.
func checkChangeVersion(vm *simulator.VirtualMachine, spec *types.VirtualMachineConfigSpec) *methodFault {
	if spec.ChangeVersion == "" || spec.ChangeVersion == vm.Config.ChangeVersion {
		return nil
	}
	return newFault(&types.ConcurrentAccess{},
		"Cannot complete operation due to concurrent modification by another operation: the configuration of %s is at changeVersion %q, the request was made against %q",
		vm.Name, vm.Config.ChangeVersion, spec.ChangeVersion)
}

// afterVersionCheck, when set (by a test), runs between ReconfigVM_Task's
// changeVersion check and its change: a failpoint that widens the window a
// non-atomic check would lose.
var afterVersionCheck atomic.Value // func()

func failpointAfterVersionCheck() {
	if f, ok := afterVersionCheck.Load().(func()); ok && f != nil {
		f()
	}
}

// vcsimConfigMethods are the methods vcsim carries out itself that change a
// VM's configuration (its name, home, hardware version, template flag, guest
// customization) or create a VM. On vSphere each leaves a new changeVersion.
var vcsimConfigMethods = map[string]bool{
	"Rename_Task":          true,
	"RelocateVM_Task":      true,
	"UpgradeVM_Task":       true,
	"CustomizeVM_Task":     true,
	"MarkAsTemplate":       true,
	"MarkAsVirtualMachine": true,
	"CreateVM_Task":        true, // on a folder: the new VM is the task's result
	"CreateChildVM_Task":   true, // on a resource pool or vApp
	"RegisterVM_Task":      true,
	"RegisterChildVM_Task": true,
}

// serveVcsimConfigChange lets vcsim carry out a method of vcsimConfigMethods
// and, when it succeeded, gives the VM it changed or created a new
// changeVersion before the client hears back. The lab's lock is held
// throughout, so a ReconfigVM_Task cannot check a changeVersion between
// vcsim's change and the new version. vcsim runs these tasks to their end
// before it answers.
func (l *lab) serveVcsimConfigChange(w http.ResponseWriter, r *http.Request, body []byte, method *simulator.Method, next http.Handler) bool {
	if !vcsimConfigMethods[method.Name] {
		return false
	}
	vm, _ := simulator.Map.Get(method.This).(*simulator.VirtualMachine)
	if req, ok := method.Body.(*types.RelocateVM_Task); ok && vm != nil && relocatesStorage(req.Spec) {
		l.serveRelocate(w, vm, req) // a Storage vMotion moves files: the lab's (relocate.go)
		return true
	}
	if vm == nil && method.This.Type == "VirtualMachine" {
		return false // vcsim answers ManagedObjectNotFound
	}
	if vm == nil && (method.Name == "Rename_Task" || method.Name == "MarkAsTemplate" || method.Name == "MarkAsVirtualMachine") {
		return false // a rename of another kind of entity
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	rec := httptest.NewRecorder()
	r.Body = io.NopCloser(bytes.NewReader(body))
	next.ServeHTTP(rec, r)
	if rec.Code == http.StatusOK {
		if target := changedVM(vm, rec.Body.Bytes()); target != nil {
			simulator.Map.WithLock(target, func() { l.newVMConfig(target) })
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
	return true
}

// changedVM reads vcsim's answer: for a task, the VM it changed (vm) or
// created (its result) if it succeeded; for a plain method, vm.
func changedVM(vm *simulator.VirtualMachine, response []byte) *simulator.VirtualMachine {
	var env struct {
		Body struct {
			Res struct {
				Returnval *types.ManagedObjectReference `xml:"returnval"`
			} `xml:",any"`
		} `xml:"Body"`
	}
	dec := xml.NewDecoder(bytes.NewReader(response))
	dec.TypeFunc = types.TypeFunc()
	if err := dec.Decode(&env); err != nil || env.Body.Res.Returnval == nil || env.Body.Res.Returnval.Type != "Task" {
		return vm
	}
	task, ok := simulator.Map.Get(*env.Body.Res.Returnval).(*simulator.Task)
	if !ok {
		return nil
	}
	var info types.TaskInfo
	simulator.Map.WithLock(task, func() { info = task.Info })
	if info.State != types.TaskInfoStateSuccess {
		return nil
	}
	if vm != nil {
		return vm
	}
	if ref, ok := info.Result.(types.ManagedObjectReference); ok {
		created, _ := simulator.Map.Get(ref).(*simulator.VirtualMachine)
		return created
	}
	return nil
}
