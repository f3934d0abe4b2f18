package main

import (
	"fmt"
	"strings"
	"sync"
)

// armedFault is one injected fault. Every fault is bounded by its count and
// disarms itself once spent.
type armedFault struct {
	ID        int    `json:"id"`
	Kind      string `json:"kind"`
	Method    string `json:"method,omitempty"`
	Fault     string `json:"fault,omitempty"`
	Message   string `json:"message,omitempty"`
	Path      string `json:"path,omitempty"`
	DelayMS   int    `json:"delay_ms,omitempty"`
	Remaining int    `json:"remaining"`
}

const (
	faultMethod        = "method"
	faultDrop          = "drop-connection"
	faultSlow          = "slow-reads"
	faultConsolidation = "consolidation-needed"
	faultSlowTask      = "slow-task"
	faultQuiesce       = "quiesce"
	maxCount           = 1000
	maxDelayMS         = 10000
)

type faultBox struct {
	mu     sync.Mutex
	nextID int
	armed  []*armedFault
}

func newFaultBox() *faultBox { return &faultBox{} }

// names tells whether a method fault applies to a call of method: its Method
// is one name, or several separated by "|" ("the next of these calls, whichever
// comes first", sharing one count).
func (f *armedFault) names(method string) bool {
	for _, name := range strings.Split(f.Method, "|") {
		if name == method {
			return true
		}
	}
	return false
}

func (b *faultBox) arm(f armedFault) (armedFault, error) {
	if f.Remaining < 1 || f.Remaining > maxCount {
		return f, fmt.Errorf("count must be between 1 and %d", maxCount)
	}
	switch f.Kind {
	case faultMethod:
		if f.Method == "" {
			return f, fmt.Errorf("a method fault needs a method name")
		}
		if _, ok := faultByName(f.Fault); !ok {
			return f, fmt.Errorf("%q is not a vSphere fault type", f.Fault)
		}
	case faultDrop:
		if f.Path == "" {
			f.Path = "any"
		}
		if f.Path != "any" && f.Path != "sdk" && f.Path != "folder" {
			return f, fmt.Errorf("path must be sdk, folder or any, not %q", f.Path)
		}
	case faultSlow:
		if f.DelayMS < 1 || f.DelayMS > maxDelayMS {
			return f, fmt.Errorf("delay_ms must be between 1 and %d", maxDelayMS)
		}
	case faultSlowTask:
		if f.Method == "" || !strings.HasSuffix(f.Method, "_Task") {
			return f, fmt.Errorf("a slow-task fault needs a task method name (e.g. CreateSnapshot_Task)")
		}
		if f.DelayMS < 1 || f.DelayMS > maxDelayMS {
			return f, fmt.Errorf("delay_ms must be between 1 and %d", maxDelayMS)
		}
	case faultQuiesce:
		if !quiesceFaults[f.Fault] {
			return f, fmt.Errorf("a quiesce fault is FilesystemQuiesceFault or ApplicationQuiesceFault, not %q", f.Fault)
		}
	case faultConsolidation:
	default:
		return f, fmt.Errorf("unknown fault kind %q", f.Kind)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nextID++
	f.ID = b.nextID
	b.armed = append(b.armed, &f)
	return f, nil
}

// take consumes one use of the first armed fault that matches.
func (b *faultBox) take(match func(*armedFault) bool) *armedFault {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, f := range b.armed {
		if !match(f) {
			continue
		}
		f.Remaining--
		if f.Remaining == 0 {
			b.armed = append(b.armed[:i], b.armed[i+1:]...)
		}
		c := *f
		return &c
	}
	return nil
}

func (b *faultBox) list() []armedFault {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []armedFault{}
	for _, f := range b.armed {
		out = append(out, *f)
	}
	return out
}

func (b *faultBox) clear() {
	b.mu.Lock()
	b.armed = nil
	b.mu.Unlock()
}
