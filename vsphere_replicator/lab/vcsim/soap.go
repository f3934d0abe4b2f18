package main

import (
	"bytes"
	"fmt"
	"log"
	"net/http"
	"reflect"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// methodFault is a fault with the message vCenter would put beside it.
type methodFault struct {
	fault types.BaseMethodFault
	msg   string
}

func newFault(f types.BaseMethodFault, format string, args ...interface{}) *methodFault {
	return &methodFault{fault: f, msg: fmt.Sprintf(format, args...)}
}

// faultByName builds an empty fault of a vim25 type name, e.g. "FileFault".
func faultByName(name string) (types.BaseMethodFault, bool) {
	t, ok := types.TypeFunc()(name)
	if !ok {
		return nil, false
	}
	f, ok := reflect.New(t).Interface().(types.BaseMethodFault)
	return f, ok
}

type envelope struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

// okBody renders "<FooResponse xmlns="urn:vim25">…</FooResponse>".
type okBody struct {
	name string
	res  interface{}
}

func (b okBody) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	if err := e.EncodeElement(b.res, xml.StartElement{Name: xml.Name{Space: "urn:vim25", Local: b.name}}); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

type faultEnvelopeBody struct {
	Fault struct {
		XMLName xml.Name   `xml:"soapenv:Fault"`
		Code    string     `xml:"faultcode"`
		String  string     `xml:"faultstring"`
		Detail  faultValue `xml:"detail"`
	}
}

// faultValue renders the detail as "<XFault xmlns="urn:vim25" xsi:type="X">".
type faultValue struct{ fault types.BaseMethodFault }

func (v faultValue) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	kind := reflect.TypeOf(v.fault).Elem().Name()
	inner := xml.StartElement{
		Name: xml.Name{Local: kind + "Fault"},
		Attr: []xml.Attr{
			{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
			{Name: xml.Name{Local: "xsi:type"}, Value: kind},
		},
	}
	if err := e.EncodeElement(v.fault, inner); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

func writeEnvelope(w http.ResponseWriter, status int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	enc := xml.NewEncoder(&out)
	err := enc.Encode(&envelope{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	})
	if err == nil {
		err = enc.Flush()
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}

// writeResult answers a call; res is a vim25 "<Method>Response" value.
func writeResult(w http.ResponseWriter, res interface{}) {
	writeEnvelope(w, http.StatusOK, okBody{reflect.TypeOf(res).Elem().Name(), res})
}

// writeTask answers a "*_Task" call with the task that carries it out.
func writeTask(w http.ResponseWriter, method string, task types.ManagedObjectReference) {
	res := &struct {
		Returnval types.ManagedObjectReference `xml:"returnval"`
	}{task}
	writeEnvelope(w, http.StatusOK, okBody{method + "Response", res})
}

func writeFault(w http.ResponseWriter, f *methodFault) {
	var body faultEnvelopeBody
	body.Fault.Code = "ServerFaultCode"
	body.Fault.String = f.msg
	body.Fault.Detail = faultValue{f.fault}
	writeEnvelope(w, http.StatusInternalServerError, body)
}

// startTask creates a vCenter task and runs work in the background, as
// vCenter does: the caller gets the task at once and waits on its state.
// method is the vim25 method name ("CloneVM_Task"): pyVmomi resolves
// TaskInfo.name to a method, so it must be one; id is the descriptionId's tail.
//
// The task's info changes under the task's lock: the property collector
// reads a task under it while a client waits on the task (WaitForUpdatesEx),
// and the race detector caught the unlocked updates.
//
// admit, when given, runs before the call returns: a fault from it fails the
// task without running work (a VM busy with another task, say).
func startTask(entity mo.Reference, method, id string, admit func(types.ManagedObjectReference) *methodFault, work func(progress func(int32)) (types.AnyType, *methodFault)) types.ManagedObjectReference {
	task := simulator.CreateTask(entity, id, nil)
	update := func(changes []types.PropertyChange) {
		simulator.Map.WithLock(task, func() { simulator.Map.Update(task, changes) })
	}
	simulator.Map.WithLock(task, func() { task.Info.Name = method })
	if admit != nil {
		if refused := admit(task.Self); refused != nil {
			work = func(func(int32)) (types.AnyType, *methodFault) { return nil, refused }
		}
	}
	go func() {
		update([]types.PropertyChange{
			{Name: "info.startTime", Val: time.Now()},
			{Name: "info.state", Val: types.TaskInfoStateRunning},
			{Name: "info.progress", Val: int32(0)},
		})
		progress := func(p int32) {
			update([]types.PropertyChange{{Name: "info.progress", Val: p}})
		}
		res, f := runGuarded(work, progress)
		changes := []types.PropertyChange{
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.progress", Val: int32(100)},
		}
		if f != nil {
			changes = append(changes,
				types.PropertyChange{Name: "info.state", Val: types.TaskInfoStateError},
				types.PropertyChange{Name: "info.error", Val: &types.LocalizedMethodFault{Fault: f.fault, LocalizedMessage: f.msg}},
			)
		} else {
			changes = append(changes,
				types.PropertyChange{Name: "info.state", Val: types.TaskInfoStateSuccess},
				types.PropertyChange{Name: "info.result", Val: res},
			)
		}
		update(changes)
	}()
	return task.Self
}

// runGuarded keeps a bug in one task from taking the whole lab down.
func runGuarded(work func(func(int32)) (types.AnyType, *methodFault), progress func(int32)) (res types.AnyType, f *methodFault) {
	defer func() {
		if r := recover(); r != nil {
			log.Printf("task panic: %v\n%s", r, debug.Stack())
			res, f = nil, newFault(&types.SystemError{Reason: fmt.Sprint(r)}, "internal lab error: %v", r)
		}
	}()
	return work(progress)
}

// sessionBook follows session cookies as vcsim hands them out, so the lab
// can expire them and refuse calls without one, as vCenter does.
type sessionBook struct {
	mu      sync.Mutex
	valid   map[string]bool
	expired map[string]bool
}

func newSessionBook() *sessionBook {
	return &sessionBook{valid: map[string]bool{}, expired: map[string]bool{}}
}

type sessionState int

const (
	sessionNone sessionState = iota
	sessionValid
	sessionExpired
)

func (b *sessionBook) state(r *http.Request) (string, sessionState) {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil || c.Value == "" {
		return "", sessionNone
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.valid[c.Value]:
		return c.Value, sessionValid
	case b.expired[c.Value]:
		return c.Value, sessionExpired
	}
	return c.Value, sessionNone
}

func (b *sessionBook) observe(h http.Header) {
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.Name == soap.SessionCookieName {
			b.mu.Lock()
			b.valid[c.Value] = true
			b.mu.Unlock()
		}
	}
}

func (b *sessionBook) forget(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.valid, id)
}

func (b *sessionBook) expireAll() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.valid)
	for id := range b.valid {
		b.expired[id] = true
	}
	b.valid = map[string]bool{}
	return n
}

// methods that vCenter answers without a session.
var sessionless = map[string]bool{
	"RetrieveServiceContent":      true,
	"Login":                       true,
	"LoginByToken":                true,
	"LoginExtensionByCertificate": true,
	"LoginExtensionBySubjectName": true,
	"CloneSession":                true,
}

// needsNoSession: the calls a client makes before it has logged in. Reading
// the ServiceInstance's content (pyVmomi's si.content) is one of them.
func needsNoSession(m *simulator.Method) bool {
	return sessionless[m.Name] || (m.Name == "Fetch" && m.This.Type == "ServiceInstance")
}

type requestStats struct {
	mu     sync.Mutex
	total  int
	method map[string]int
	folder int
}

func newRequestStats() *requestStats { return &requestStats{method: map[string]int{}} }

func (s *requestStats) soap(name string) {
	s.mu.Lock()
	s.total++
	s.method[name]++
	s.mu.Unlock()
}

func (s *requestStats) folderRequest() {
	s.mu.Lock()
	s.folder++
	s.mu.Unlock()
}

func (s *requestStats) snapshot() map[string]interface{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]int{}
	for k, v := range s.method {
		m[k] = v
	}
	return map[string]interface{}{"soap_requests": s.total, "methods": m, "folder_requests": s.folder}
}

func (s *requestStats) reset() {
	s.mu.Lock()
	s.total, s.folder, s.method = 0, 0, map[string]int{}
	s.mu.Unlock()
}

func isTaskMethod(name string) bool { return strings.HasSuffix(name, "_Task") }

// taskDescriptionID is a task's descriptionId tail for a method: "CloneVM_Task" -> "cloneVM".
func taskDescriptionID(method string) string {
	id := strings.TrimSuffix(method, "_Task")
	return strings.ToLower(id[:1]) + id[1:]
}
