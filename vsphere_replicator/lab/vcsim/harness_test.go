package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The tests share one lab, started as main.go starts it (vcsim's registry is
// global, so there can be only one per process), and each test takes VMs no
// other test has touched. It listens over plain HTTP: TLS is not what these
// tests are about, and the lab's handler is the same.
var (
	testLab    *lab
	testServer *simulator.Server
	testURL    *url.URL
	testVMs    int32 // VMs handed out so far
)

const (
	testVMCount  = 24
	testDiskSize = 4 << 20
	testWindow   = 1 << 20
	testBlock    = 64 << 10
	testDCFolder = "Sites/West"
	testNFS      = "nfs-ds"
	testVSAN     = "vsan-ds"
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	log.SetOutput(quietLog{}) // vcsim logs every fault it answers
	dir, err := os.MkdirTemp("", "vrlab-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cfg := config{
		stateDir: dir, listen: "127.0.0.1:0", vms: testVMCount, disksPerVM: 2, diskSize: testDiskSize,
		hosts: 2, cbtWindow: testWindow, cbtBlock: testBlock, user: "tester", password: "secret",
		dcFolder: testDCFolder, // every test runs with the datacenter two folders down
		// Two more datastores, of the kinds that are not VMFS (datastores_test.go).
		datastoreKinds: nameValues{testNFS: kindNFS, testVSAN: kindVSAN},
	}
	if err := validate(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, server, err := newLabServer(cfg, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer server.Close()
	if _, err := l.buildInventory(context.Background(), filepath.Join(dir, "datastores")); err != nil {
		fmt.Fprintln(os.Stderr, "inventory:", err)
		return 1
	}
	testLab, testServer = l, server
	u := *server.URL
	u.User = url.UserPassword(cfg.user, cfg.password)
	testURL = &u
	return m.Run()
}

type quietLog struct{}

func (quietLog) Write(p []byte) (int, error) {
	if os.Getenv("VRLAB_TEST_LOG") != "" {
		return os.Stderr.Write(p)
	}
	return len(p), nil
}

// freshVM hands out a VM no other test has used.
func freshVM(t *testing.T) string {
	t.Helper()
	n := atomic.AddInt32(&testVMs, 1)
	if n > testVMCount {
		t.Fatalf("the test lab ran out of VMs: raise testVMCount")
	}
	return (&config{}).vmName(int(n))
}

// client logs in over the lab's SOAP endpoint, as any client would.
func client(t *testing.T) *govmomi.Client {
	t.Helper()
	ctx := context.Background()
	c, err := govmomi.NewClient(ctx, testURL, true)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	t.Cleanup(func() { _ = c.Logout(ctx) })
	return c
}

func vmRef(t *testing.T, name string) types.ManagedObjectReference {
	t.Helper()
	vm := findVM(name)
	if vm == nil {
		t.Fatalf("no VM %s", name)
	}
	return vm.Self
}

// wait waits for a task and returns its result, or the fault it failed
// with. It polls the task's info.state and info.error, each by its own
// path: vcsim's WaitForUpdatesEx answers every 250 ms only (too slow for
// tests that run hundreds of tasks), and a filter on the parent path
// "info", which govmomi's Task.Wait uses, makes vcsim read the task without
// its lock (see docs/lab.md).
func wait(ctx context.Context, c *govmomi.Client, ref types.ManagedObjectReference, err error) (types.AnyType, error) {
	if err != nil {
		return nil, err
	}
	pc := property.DefaultCollector(c.Client)
	for {
		var t mo.Task
		if err := pc.RetrieveOne(ctx, ref, []string{"info.state", "info.error", "info.result"}, &t); err != nil {
			return nil, err
		}
		switch t.Info.State {
		case types.TaskInfoStateSuccess:
			return t.Info.Result, nil
		case types.TaskInfoStateError:
			return nil, task.Error{LocalizedMethodFault: t.Info.Error}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// faultOf names the vSphere fault behind an error ("ConcurrentAccess"; ""
// when there is none).
func faultOf(err error) string {
	if err == nil {
		return ""
	}
	var te task.Error
	if errors.As(err, &te) {
		return strings.TrimPrefix(fmt.Sprintf("%T", te.Fault()), "*types.")
	}
	if soap.IsSoapFault(err) {
		return strings.TrimPrefix(strings.TrimPrefix(fmt.Sprintf("%T", soap.ToSoapFault(err).VimFault()), "*"), "types.")
	}
	return "error: " + err.Error()
}

func createSnapshot(ctx context.Context, c *govmomi.Client, vm types.ManagedObjectReference, name string) (types.ManagedObjectReference, error) {
	res, err := methods.CreateSnapshot_Task(ctx, c, &types.CreateSnapshot_Task{This: vm, Name: name})
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	out, err := wait(ctx, c, res.Returnval, nil)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	return out.(types.ManagedObjectReference), nil
}

func removeSnapshot(ctx context.Context, c *govmomi.Client, snap types.ManagedObjectReference, children bool) error {
	res, err := methods.RemoveSnapshot_Task(ctx, c, &types.RemoveSnapshot_Task{This: snap, RemoveChildren: children})
	if err != nil {
		return err
	}
	_, err = wait(ctx, c, res.Returnval, nil)
	return err
}

func revertSnapshot(ctx context.Context, c *govmomi.Client, snap types.ManagedObjectReference) error {
	res, err := methods.RevertToSnapshot_Task(ctx, c, &types.RevertToSnapshot_Task{This: snap})
	if err != nil {
		return err
	}
	_, err = wait(ctx, c, res.Returnval, nil)
	return err
}

func reconfigure(ctx context.Context, c *govmomi.Client, vm types.ManagedObjectReference, spec types.VirtualMachineConfigSpec) error {
	res, err := methods.ReconfigVM_Task(ctx, c, &types.ReconfigVM_Task{This: vm, Spec: spec})
	if err != nil {
		return err
	}
	_, err = wait(ctx, c, res.Returnval, nil)
	return err
}

func removeAll(ctx context.Context, c *govmomi.Client, vm types.ManagedObjectReference) error {
	res, err := methods.RemoveAllSnapshots_Task(ctx, c, &types.RemoveAllSnapshots_Task{This: vm})
	if err != nil {
		return err
	}
	_, err = wait(ctx, c, res.Returnval, nil)
	return err
}

// readVM reads a VM's properties through the property collector, as clients do.
func readVM(ctx context.Context, c *govmomi.Client, vm types.ManagedObjectReference, props ...string) (mo.VirtualMachine, error) {
	var out mo.VirtualMachine
	err := property.DefaultCollector(c.Client).RetrieveOne(ctx, vm, props, &out)
	return out, err
}

func changeVersion(t *testing.T, ctx context.Context, c *govmomi.Client, vm types.ManagedObjectReference) string {
	t.Helper()
	v, err := readVM(ctx, c, vm, "config.changeVersion")
	if err != nil {
		t.Fatalf("read changeVersion: %v", err)
	}
	if v.Config == nil {
		return ""
	}
	return v.Config.ChangeVersion
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
