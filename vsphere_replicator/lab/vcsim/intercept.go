package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const maxSOAPBody = 64 << 20

// handler puts the lab in front of vcsim: it serves the control API, keeps
// sessions honest, injects faults, implements the methods where vcsim has no
// data (snapshots, CBT, clones) and the Automation SDK's /api endpoint,
// passing everything else through.
func (l *lab) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/lab/"):
			l.serveControl(w, r)
		case r.URL.Path == "/sdk" && r.Method == http.MethodPost:
			l.serveSDK(w, r, next)
		case strings.HasPrefix(r.URL.Path, "/folder/"):
			l.serveFolder(w, r, next)
		case r.URL.Path == apiPath:
			l.serveAPI(w, r, next)
		case strings.HasPrefix(r.URL.Path, "/rest/"):
			if !l.guardRESTLogin(w, r) {
				next.ServeHTTP(w, r)
			}
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// dropFor tells whether to cut this response: a drop fault for its path and,
// if the fault names methods, for this method. A cut response of a task
// method is the hard case: vCenter started the task, the client cannot know.
func (l *lab) dropFor(path, method string) bool {
	return l.faults.take(func(f *armedFault) bool {
		return f.Kind == faultDrop && (f.Path == "any" || f.Path == path) && (f.Method == "" || f.names(method))
	}) != nil
}

func (l *lab) serveSDK(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if l.cfg.latency > 0 {
		time.Sleep(l.cfg.latency)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxSOAPBody))
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	name := ""
	if err == nil {
		name = method.Name
	}
	if l.dropFor("sdk", name) {
		cw := &cuttingWriter{ResponseWriter: w}
		defer cw.finish()
		w = cw
	}
	if err != nil {
		l.stats.soap("?")
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
		return
	}
	l.stats.soap(method.Name)

	cookie, state := l.sessions.state(r)
	if !needsNoSession(method) && state != sessionValid {
		writeFault(w, newFault(&types.NotAuthenticated{NoPermission: types.NoPermission{Object: method.This, PrivilegeId: "System.View"}},
			"The session is not authenticated."))
		return
	}
	if state == sessionExpired {
		// Logging in again must not be refused because of the dead cookie.
		r.Header.Del("Cookie")
	}
	if f := l.faults.take(func(f *armedFault) bool { return f.Kind == faultMethod && f.names(method.Name) }); f != nil {
		l.injectMethodFault(w, method, f)
		return
	}
	if req, ok := method.Body.(*types.RetrievePropertiesEx); ok {
		l.pages.first(w, r, body, next, req)
		return
	}
	if l.serveExtended(w, method) {
		return
	}
	if l.refuseBusy(w, method) {
		return
	}
	if l.serveVcsimConfigChange(w, r, body, method, next) {
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	next.ServeHTTP(&sessionWatcher{ResponseWriter: w, book: l.sessions}, r)
	if isTaskMethod(method.Name) && method.This.Type == "VirtualMachine" {
		l.refreshTools(method.This) // vcsim's tasks end before it answers: a power change shows in Tools' state
	}
	if method.Name == "Logout" && cookie != "" {
		l.sessions.forget(cookie)
	}
}

func (l *lab) injectMethodFault(w http.ResponseWriter, method *simulator.Method, armed *armedFault) {
	f, _ := faultByName(armed.Fault)
	msg := armed.Message
	if msg == "" {
		msg = "injected by the lab: " + armed.Fault
	}
	fillReferences(reflect.ValueOf(f).Elem(), method.This)
	mf := &methodFault{fault: f, msg: msg}
	if !isTaskMethod(method.Name) {
		writeFault(w, mf)
		return
	}
	entity := simulator.Map.Get(method.This)
	if snap, ok := entity.(*simulator.VirtualMachineSnapshot); ok {
		entity = simulator.Map.Get(snap.Vm) // a task's entity is a managed entity: the VM
	}
	if entity == nil {
		writeFault(w, newFault(&types.ManagedObjectNotFound{Obj: method.This}, "managed object not found: %s", method.This))
		return
	}
	task := startTask(entity, method.Name, taskDescriptionID(method.Name), nil, func(func(int32)) (types.AnyType, *methodFault) { return nil, mf })
	writeTask(w, method.Name, task)
}

// serveExtended answers the methods the lab implements itself.
func (l *lab) serveExtended(w http.ResponseWriter, method *simulator.Method) bool {
	vm, _ := simulator.Map.Get(method.This).(*simulator.VirtualMachine)
	snap, _ := simulator.Map.Get(method.This).(*simulator.VirtualMachineSnapshot)
	// Every task the lab runs on a VM holds it (vmtasks.go): a clone shares the hold, others don't.
	runTask := func(target *simulator.VirtualMachine, id string, work func(func(int32)) (types.AnyType, *methodFault)) {
		exclusive := method.Name != "CloneVM_Task"
		writeTask(w, method.Name, l.startVMTask(target, method.Name, id, exclusive, work))
	}
	if method.Name == "Fetch" {
		return l.fetch(w, method)
	}
	switch req := method.Body.(type) {
	case *types.ContinueRetrievePropertiesEx:
		res, fault := l.pages.next(req.Token)
		if fault != nil {
			writeFault(w, fault)
		} else {
			writeResult(w, &types.ContinueRetrievePropertiesExResponse{Returnval: *res})
		}
	case *types.CancelRetrievePropertiesEx:
		l.pages.cancel(req.Token)
		writeResult(w, &types.CancelRetrievePropertiesExResponse{})
	case *types.CreateSnapshot_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "createSnapshot", func(func(int32)) (types.AnyType, *methodFault) { return l.createSnapshot(vm, req) })
	case *types.RemoveSnapshot_Task:
		if snap == nil {
			return false
		}
		owner, _ := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
		if owner == nil {
			return false
		}
		runTask(owner, "remove", func(func(int32)) (types.AnyType, *methodFault) {
			return l.removeSnapshot(snap, req.RemoveChildren)
		})
	case *types.RevertToSnapshot_Task:
		if snap == nil {
			return false
		}
		target, _ := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
		if target == nil {
			return false
		}
		suppress := req.SuppressPowerOn != nil && *req.SuppressPowerOn
		runTask(target, "revert", func(func(int32)) (types.AnyType, *methodFault) { return l.revert(target, snap, suppress) })
	case *types.RevertToCurrentSnapshot_Task:
		if vm == nil {
			return false
		}
		var current *simulator.VirtualMachineSnapshot
		var name string
		simulator.Map.WithLock(vm, func() {
			name = vm.Name
			if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
				current, _ = simulator.Map.Get(*vm.Snapshot.CurrentSnapshot).(*simulator.VirtualMachineSnapshot)
			}
		})
		if current == nil {
			writeFault(w, newFault(&types.NotFound{}, "%s has no current snapshot", name))
			return true
		}
		suppress := req.SuppressPowerOn != nil && *req.SuppressPowerOn
		// The current snapshot is looked up again when the task runs: another may have changed it.
		runTask(vm, "revertToCurrentSnapshot", func(func(int32)) (types.AnyType, *methodFault) { return l.revert(vm, nil, suppress) })
	case *types.RemoveAllSnapshots_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "removeAllSnapshots", func(func(int32)) (types.AnyType, *methodFault) { return l.removeAllSnapshots(vm) })
	case *types.ConsolidateVMDisks_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "consolidateDisks", func(func(int32)) (types.AnyType, *methodFault) { return l.consolidate(vm) })
	case *types.QueryChangedDiskAreas:
		if vm == nil {
			return false
		}
		info, fault := l.queryChangedDiskAreas(vm, req)
		if fault != nil {
			writeFault(w, fault)
		} else {
			writeResult(w, &types.QueryChangedDiskAreasResponse{Returnval: *info})
		}
	case *types.CloneVM_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "clone", func(progress func(int32)) (types.AnyType, *methodFault) { return l.cloneVM(vm, req, progress) })
	case *types.ReconfigVM_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "reconfigure", func(func(int32)) (types.AnyType, *methodFault) { return l.reconfigure(vm, req.Spec) })
	case *types.PowerOnVM_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "powerOn", func(func(int32)) (types.AnyType, *methodFault) { return l.powerOn(vm) })
	case *types.CustomizeVM_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "customizeVm", func(func(int32)) (types.AnyType, *methodFault) { return l.customize(vm, req.Spec) })
	case *types.Destroy_Task:
		if vm == nil {
			return false
		}
		runTask(vm, "destroy", func(func(int32)) (types.AnyType, *methodFault) { return l.destroy(vm) })
	case *types.DeleteVirtualDisk_Task:
		return l.serveDeleteVirtualDisk(w, method, req)
	default:
		return false
	}
	return true
}

// sessionWatcher records the session cookies vcsim hands out.
type sessionWatcher struct {
	http.ResponseWriter
	book *sessionBook
}

func (s *sessionWatcher) WriteHeader(code int) {
	s.book.observe(s.ResponseWriter.Header())
	s.ResponseWriter.WriteHeader(code)
}

func (s *sessionWatcher) Write(b []byte) (int, error) {
	s.book.observe(s.ResponseWriter.Header())
	return s.ResponseWriter.Write(b)
}

func (s *sessionWatcher) Unwrap() http.ResponseWriter { return s.ResponseWriter }

var errCut = errors.New("connection dropped by the lab")

// cuttingWriter sends the headers and about half of the body, then closes
// the connection: what a client sees when the network fails mid-response.
type cuttingWriter struct {
	http.ResponseWriter
	status  int
	limit   int64
	written int64
	cut     bool
}

func (c *cuttingWriter) WriteHeader(code int) { c.status = code }

func (c *cuttingWriter) Write(p []byte) (int, error) {
	if c.cut {
		return 0, errCut
	}
	if c.limit == 0 {
		length, err := strconv.ParseInt(c.Header().Get("Content-Length"), 10, 64)
		if err != nil || length <= 0 {
			length = int64(len(p))
			c.Header().Set("Content-Length", strconv.Itoa(len(p)))
		}
		c.limit = length / 2
		if c.limit > 256<<10 {
			c.limit = 256 << 10
		}
		if c.limit < 1 {
			c.limit = 1
		}
		if c.status == 0 {
			c.status = http.StatusOK
		}
		c.ResponseWriter.WriteHeader(c.status)
	}
	room := c.limit - c.written
	if int64(len(p)) < room {
		n, err := c.ResponseWriter.Write(p)
		c.written += int64(n)
		return n, err
	}
	n, _ := c.ResponseWriter.Write(p[:room])
	c.written += int64(n)
	c.hangUp()
	return n, errCut
}

func (c *cuttingWriter) hangUp() {
	c.cut = true
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	if h, ok := c.ResponseWriter.(http.Hijacker); ok {
		if conn, _, err := h.Hijack(); err == nil {
			_ = conn.Close()
		}
	}
}

// finish makes sure a response that never wrote a body is cut as well.
func (c *cuttingWriter) finish() {
	if !c.cut {
		if c.status == 0 {
			c.status = http.StatusOK
		}
		c.hangUp()
	}
}

// serveFolder serves datastore files as vCenter does (folder.go): only to a
// logged-in session (or HTTP basic auth; anything else gets 401), with Range
// support, and with the lab's read faults applied.
func (l *lab) serveFolder(w http.ResponseWriter, r *http.Request, next http.Handler) {
	l.stats.folderRequest()
	_, state := l.sessions.state(r)
	if state != sessionValid {
		user, pass, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(user), []byte(l.cfg.user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(pass), []byte(l.cfg.password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if f := l.faults.take(func(f *armedFault) bool { return f.Kind == faultSlow }); f != nil {
			time.Sleep(time.Duration(f.DelayMS) * time.Millisecond)
		}
	}
	serve := next
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		serve = http.HandlerFunc(l.serveDatastoreFile)
	}
	if l.dropFor("folder", "") {
		cw := &cuttingWriter{ResponseWriter: w}
		serve.ServeHTTP(cw, r)
		cw.finish()
		return
	}
	serve.ServeHTTP(w, r)
}

// fetch answers pyVmomi's property accessor; vcsim's own Fetch fails on a
// property that is unset (a VM without snapshots), where vCenter answers
// with no value.
func (l *lab) fetch(w http.ResponseWriter, method *simulator.Method) bool {
	body := reflect.ValueOf(method.Body)
	if body.Kind() != reflect.Ptr || method.This.Type == "ServiceInstance" {
		return false
	}
	prop := body.Elem().FieldByName("Prop")
	if !prop.IsValid() || simulator.Map.Get(method.This) == nil {
		return false
	}
	content, err := property.DefaultCollector(l.inproc).RetrieveProperties(context.Background(), types.RetrieveProperties{
		SpecSet: []types.PropertyFilterSpec{{
			ObjectSet: []types.ObjectSpec{{Obj: method.This}},
			PropSet:   []types.PropertySpec{{Type: method.This.Type, PathSet: []string{prop.String()}}},
		}},
	})
	if err != nil {
		return false
	}
	res := &struct {
		Returnval types.AnyType `xml:"returnval,omitempty,typeattr"`
	}{}
	if rv := content.Returnval; len(rv) > 0 && len(rv[0].PropSet) > 0 {
		res.Returnval = rv[0].PropSet[0].Val
	}
	writeEnvelope(w, http.StatusOK, okBody{"FetchResponse", res})
	return true
}

// fillReferences points a fault's empty object references (NoPermission's
// "object", say) at the object called, so clients can decode the fault.
func fillReferences(v reflect.Value, this types.ManagedObjectReference) {
	for i := 0; i < v.NumField(); i++ {
		field := v.Field(i)
		switch {
		case field.Type() == reflect.TypeOf(this):
			if field.Interface().(types.ManagedObjectReference).Type == "" {
				field.Set(reflect.ValueOf(this))
			}
		case field.Kind() == reflect.Struct && v.Type().Field(i).Anonymous:
			fillReferences(field, this)
		}
	}
}
