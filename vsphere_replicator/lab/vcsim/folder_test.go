package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

const testDCPath = testDCFolder + "/DC0"

// folderGet asks the shared test lab for a datastore file, with the lab's
// user as HTTP basic auth unless anonymous.
func folderGet(t *testing.T, h http.Handler, file, dcPath, dsName string, anonymous bool) *httptest.ResponseRecorder {
	t.Helper()
	q := url.Values{"dcPath": {dcPath}, "dsName": {dsName}}
	r := httptest.NewRequest(http.MethodGet, "/folder/"+file+"?"+q.Encode(), nil)
	if !anonymous {
		r.SetBasicAuth("tester", "secret")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// labHandler is the test lab's /folder front, or one of a lab with other
// options over the same inventory (vcsim's registry is global).
func labHandler(cfg *config) http.Handler {
	l := testLab
	if cfg != nil {
		l = newLab(*cfg, testLab.inproc)
	}
	return l.handler(http.NotFoundHandler())
}

func currentLayer(t *testing.T, vmName string) string {
	t.Helper()
	vm := findVM(vmName)
	var file string
	simulator.Map.WithLock(vm, func() { file = diskBacking(vmDisks(vm.Config.Hardware.Device)[0]).FileName })
	return strings.TrimPrefix(file, "["+primaryDatastore+"] ")
}

func TestFolderDCPathIsTheInventoryPath(t *testing.T) {
	name := freshVM(t)
	descriptor := currentLayer(t, name)
	h := labHandler(nil)
	dir, err := datastoreDir(primaryDatastore)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(descriptor)))
	if err != nil {
		t.Fatal(err)
	}
	got := folderGet(t, h, descriptor, testDCPath, primaryDatastore, false)
	if got.Code != http.StatusOK || !bytes.Equal(got.Body.Bytes(), want) {
		t.Fatalf("dcPath %s: %d, %d bytes, want 200 and the descriptor", testDCPath, got.Code, got.Body.Len())
	}
	// Percent-encoded slashes decode to the same path: clients send either.
	r := httptest.NewRequest(http.MethodGet, "/folder/"+descriptor+"?dcPath=Sites%2FWest%2FDC0&dsName="+primaryDatastore, nil)
	r.SetBasicAuth("tester", "secret")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("an encoded dcPath: %d, want 200", w.Code)
	}
	for _, bad := range []struct{ dcPath, dsName string }{
		{"DC0", primaryDatastore},                       // the name alone: govmomi#285's 404
		{"sites/west/DC0", primaryDatastore},            // inventory paths are case-sensitive
		{"/" + testDCPath, primaryDatastore},            // a path below the root folder, without a leading slash
		{testDCFolder, primaryDatastore},                // a folder is no datacenter
		{"", primaryDatastore},                          // vCenter needs one; only ESXi defaults to ha-datacenter
		{testDCPath, "no-such-ds"},                      // not a datastore of that datacenter
		{testDCPath, strings.ToUpper(primaryDatastore)}, // datastore names are case-sensitive too
	} {
		if got := folderGet(t, h, descriptor, bad.dcPath, bad.dsName, false); got.Code != http.StatusNotFound {
			t.Errorf("dcPath %q dsName %q: %d, want 404", bad.dcPath, bad.dsName, got.Code)
		}
	}
	if got := folderGet(t, h, name+"/no-such.vmdk", testDCPath, primaryDatastore, false); got.Code != http.StatusNotFound {
		t.Errorf("a missing file: %d, want 404", got.Code)
	}
	got = folderGet(t, h, descriptor, testDCPath, primaryDatastore, true)
	if got.Code != http.StatusUnauthorized || got.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("no session: %d %q, want 401 with a challenge", got.Code, got.Header().Get("WWW-Authenticate"))
	}
	if testLab.cfg.lockRunningDisks {
		t.Fatal("the shared lab must keep its default: running disks readable")
	}
}

func TestFolderInventoryPathOfTheDatacenter(t *testing.T) {
	var paths []string
	for _, e := range simulator.Map.All("Datacenter") {
		p, ok := inventoryPath(e.Reference())
		if !ok {
			t.Fatalf("%s has no inventory path", e.Reference())
		}
		paths = append(paths, p)
	}
	if len(paths) != 1 || paths[0] != testDCPath {
		t.Fatalf("datacenters at %v, want [%s]", paths, testDCPath)
	}
}

func TestFolderLockRunningDisks(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	name := freshVM(t)
	vm := vmRef(t, name)
	cfg := testLab.cfg
	cfg.lockRunningDisks = true
	h := labHandler(&cfg)
	base := currentLayer(t, name)
	baseExtent := strings.TrimSuffix(base, ".vmdk") + "-flat.vmdk"
	for _, file := range []string{base, baseExtent} {
		if got := folderGet(t, h, file, testDCPath, primaryDatastore, false); got.Code != statusLocked {
			t.Fatalf("%s of a running VM: %d, want %d", file, got.Code, statusLocked)
		}
	}
	// The lab's default serves it: the option is what refuses.
	if got := folderGet(t, labHandler(nil), baseExtent, testDCPath, primaryDatastore, false); got.Code != http.StatusOK {
		t.Fatalf("without the option: %d, want 200", got.Code)
	}
	if _, err := createSnapshot(ctx, c, vm, "locks"); err != nil {
		t.Fatal(err)
	}
	current := currentLayer(t, name)
	if current == base {
		t.Fatalf("a snapshot left the current layer at %s", base)
	}
	// The snapshot's layer is the running layer's parent, opened read-only: readable.
	if got := folderGet(t, h, baseExtent, testDCPath, primaryDatastore, false); got.Code != http.StatusOK {
		t.Fatalf("the parent layer %s: %d, want 200", baseExtent, got.Code)
	}
	if got := folderGet(t, h, current, testDCPath, primaryDatastore, false); got.Code != statusLocked {
		t.Fatalf("the new current layer %s: %d, want %d", current, got.Code, statusLocked)
	}
	off, err := methods.PowerOffVM_Task(ctx, c, &types.PowerOffVM_Task{This: vm})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(ctx, c, off.Returnval, nil); err != nil {
		t.Fatal(err)
	}
	got := folderGet(t, h, current, testDCPath, primaryDatastore, false)
	if got.Code != http.StatusOK {
		t.Fatalf("the current layer of a powered-off VM: %d, want 200", got.Code)
	}
	if body, _ := io.ReadAll(got.Body); !strings.Contains(string(body), "createType") {
		t.Fatalf("not a descriptor: %q", body)
	}
}
