package main

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Data-path sessions: a disk layer held open by a backup proxy (VDDK over
// NBD/NBDSSL, or a hotadd proxy that attached it) is locked on its
// datastore, and ESXi refuses to change or delete it until the proxy lets
// go. What users meet is a task failing with vim.fault.FileLocked, "Unable
// to access file <file> since it is locked" (FileLocked: "Thrown if an
// attempt is made to lock a file that is already in use", vSphere Web
// Services API reference; the message is vSphere's for that fault). The
// classic case is a snapshot removal or consolidation while a proxy still
// has the snapshot's disk open: the merge must write into that layer (VDDK
// programming guide: a backup application closes its disks, VixDiskLib_Close
// and VixDiskLib_Cleanup, before it deletes the snapshot; backup vendors'
// notes on "consolidation fails, file locked" after a proxy kept a hotadd
// disk attached say the same). SnapshotLocked ("an attempt is made to create
// or delete a snapshot on a virtual machine that has its snapshot locked",
// API reference) is the other retryable answer; the lab gives it only when a
// method fault injects it (faults.go accepts any vim25 fault type).
//
// The lab's VDDK stand-in (lab/vddk_standin.py) registers each disk it
// serves here when nbdkit opens it and unregisters it at close; the lab then
// refuses, with FileLocked naming the layer, every task that would rewrite or
// delete an open layer: removing the snapshot whose layer (or whose child's
// layer, which the removal folds into it) is open, removing all snapshots,
// consolidating, reverting or snapshotting over an open current layer,
// destroying the VM and moving its disks (Storage vMotion).

type dataSession struct {
	ID       int       `json:"id"`
	VM       string    `json:"vm"`
	File     string    `json:"file"` // the layer's datastore path, "[ds] dir/disk-000001.vmdk"
	ReadOnly bool      `json:"readonly"`
	PID      int       `json:"pid,omitempty"` // the serving process: its locks end with it
	Opened   time.Time `json:"opened"`
}

type sessionRegistry struct {
	mu     sync.Mutex
	nextID int
	open   map[int]*dataSession
}

func newSessionRegistry() *sessionRegistry { return &sessionRegistry{open: map[int]*dataSession{}} }

const maxDataSessions = 1024

func (s *sessionRegistry) add(vm, file string, readOnly bool, pid int) (dataSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune()
	if len(s.open) >= maxDataSessions {
		return dataSession{}, fmt.Errorf("%d data-path sessions are open already", maxDataSessions)
	}
	s.nextID++
	d := &dataSession{ID: s.nextID, VM: vm, File: file, ReadOnly: readOnly, PID: pid, Opened: time.Now()}
	s.open[d.ID] = d
	return *d, nil
}

func (s *sessionRegistry) remove(id int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.open[id]
	delete(s.open, id)
	return ok
}

// prune forgets the sessions of processes that have ended: ESXi releases a
// dead client's file locks too (its lock lease is no longer renewed), and a
// data path killed by a signal never says goodbye. Callers hold s.mu.
func (s *sessionRegistry) prune() {
	for id, d := range s.open {
		if d.PID > 0 && syscall.Kill(d.PID, 0) == syscall.ESRCH {
			delete(s.open, id)
		}
	}
}

func (s *sessionRegistry) list() []dataSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune()
	out := []dataSession{}
	for _, d := range s.open {
		out = append(out, *d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// held returns the first of files that a session holds open, if any.
func (s *sessionRegistry) held(files []string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune()
	for _, f := range files {
		for _, d := range s.open {
			if d.File == f {
				return f, true
			}
		}
	}
	return "", false
}

func fileLocked(file string) *methodFault {
	return newFault(&types.FileLocked{FileFault: types.FileFault{File: file}}, "Unable to access file %s since it is locked", file)
}

// lockedLayer answers FileLocked when a data-path session holds one of
// files open. Callers may hold the VM's lock: the registry's is taken inside.
func (l *lab) lockedLayer(files []string) *methodFault {
	if f, ok := l.dataSessions.held(files); ok {
		return fileLocked(f)
	}
	return nil
}

// currentLayers are the layers the VM writes into now (the top of each chain).
func currentLayers(vm *simulator.VirtualMachine) []string {
	var out []string
	for _, d := range vmDisks(vm.Config.Hardware.Device) {
		if b := diskBacking(d); b != nil {
			out = append(out, b.FileName)
		}
	}
	return out
}

// allLayers lists every layer of every chain the VM or its snapshots use.
func allLayers(vm *simulator.VirtualMachine) []string {
	var out []string
	for _, b := range allBackings(vm) {
		out = append(out, b.FileName)
	}
	return out
}

// removalLayers are the layers removing targets rewrites: each snapshot's
// own layer (a child is folded into it) and the children that are folded.
func removalLayers(vm *simulator.VirtualMachine, targets []types.ManagedObjectReference) []string {
	var out []string
	for _, ref := range targets {
		snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
		if !ok {
			continue
		}
		for _, disk := range vmDisks(snap.Config.Hardware.Device) {
			x := diskBacking(disk).FileName
			out = append(out, x)
			for _, b := range allBackings(vm) {
				if b.Parent != nil && b.Parent.FileName == x {
					out = append(out, b.FileName)
				}
			}
		}
	}
	return out
}

// serveDataSessions is the control endpoint the VDDK stand-in calls:
// POST ?vm=&file=&readonly=1&pid= opens a session on a layer of the VM (its
// current disks or a snapshot's), DELETE ?id= closes it, GET lists them.
func (l *lab) serveDataSessions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch r.Method {
	case http.MethodGet:
		writeJSON(w, http.StatusOK, l.dataSessions.list())
	case http.MethodPost:
		vm := findVM(q.Get("vm"))
		if vm == nil {
			jsonError(w, http.StatusNotFound, "no VM "+strconv.Quote(q.Get("vm")))
			return
		}
		file := q.Get("file")
		known := false
		simulator.Map.WithLock(vm, func() {
			for _, f := range allLayers(vm) {
				known = known || f == file
			}
		})
		if !known {
			jsonError(w, http.StatusNotFound, fmt.Sprintf("%s is no disk layer of %s", file, vm.Self.Value))
			return
		}
		pid, err := intParam(q, "pid", 0)
		if err != nil {
			jsonError(w, http.StatusBadRequest, err.Error())
			return
		}
		d, err := l.dataSessions.add(vm.Self.Value, file, q.Get("readonly") == "1", pid)
		if err != nil {
			jsonError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, d)
	case http.MethodDelete:
		id, err := intParam(q, "id", 0)
		if err != nil {
			jsonError(w, http.StatusBadRequest, err.Error())
			return
		}
		if !l.dataSessions.remove(id) {
			jsonError(w, http.StatusNotFound, fmt.Sprintf("no data-path session %d", id))
			return
		}
		writeJSON(w, http.StatusOK, map[string]interface{}{"closed": id})
	default:
		jsonError(w, http.StatusMethodNotAllowed, "use GET, POST or DELETE")
	}
}
