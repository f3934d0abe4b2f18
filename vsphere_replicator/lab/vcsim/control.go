package main

import (
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
)

const maxWrite = 1 << 30

// serveControl is the lab's own API (/lab/v1/...): guest writes, CBT
// resets, fault injection and request statistics. It needs the lab login.
func (l *lab) serveControl(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if !ok || subtle.ConstantTimeCompare([]byte(user), []byte(l.cfg.user)) != 1 ||
		subtle.ConstantTimeCompare([]byte(pass), []byte(l.cfg.password)) != 1 {
		w.Header().Set("WWW-Authenticate", `Basic realm="vsphere_replicator lab"`)
		jsonError(w, http.StatusUnauthorized, "authentication required")
		return
	}
	route := strings.TrimPrefix(r.URL.Path, "/lab/v1/")
	q := r.URL.Query()
	switch {
	case route == "write" && r.Method == http.MethodPost:
		disk, err1 := intParam(q, "disk", 0)
		offset, err2 := int64Param(q, "offset")
		if err := firstErr(err1, err2); err != nil {
			jsonError(w, http.StatusBadRequest, err.Error())
			return
		}
		data, err := io.ReadAll(io.LimitReader(r.Body, maxWrite+1))
		if err != nil {
			jsonError(w, http.StatusBadRequest, err.Error())
			return
		}
		if len(data) > maxWrite {
			jsonError(w, http.StatusRequestEntityTooLarge, "one write may carry at most 1 GiB")
			return
		}
		res, err := l.guestWrite(q.Get("vm"), disk, offset, data)
		reply(w, res, err)
	case route == "cbt-reset" && r.Method == http.MethodPost:
		disk, err := intParam(q, "disk", -1)
		if err != nil {
			jsonError(w, http.StatusBadRequest, err.Error())
			return
		}
		res, err := l.cbtReset(q.Get("vm"), disk)
		reply(w, res, err)
	case route == "tools" && r.Method == http.MethodPost:
		res, err := l.setTools(q.Get("vm"), q.Get("state"))
		reply(w, res, err)
	case route == "disk-sessions":
		l.serveDataSessions(w, r)
	case route == "datastores" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, l.datastores.list())
	case route == "star-answer" && r.Method == http.MethodPost:
		res, err := l.datastores.setStarAnswer(q.Get("datastore"), q.Get("answer"))
		reply(w, res, err)
	case route == "faults":
		l.serveFaults(w, r)
	case route == "status" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]interface{}{
			"vms":       len(simulator.Map.All("VirtualMachine")),
			"uptime_s":  time.Since(l.started).Seconds(),
			"cbt_block": l.cfg.cbtBlock, "cbt_window": l.cfg.cbtWindow,
			"faults": l.faults.list(), "datastores": l.datastores.list(),
		})
	case route == "stats" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, l.stats.snapshot())
	case route == "stats" && r.Method == http.MethodDelete:
		l.stats.reset()
		writeJSON(w, http.StatusOK, map[string]interface{}{"reset": true})
	case route == "shutdown" && r.Method == http.MethodPost:
		writeJSON(w, http.StatusOK, map[string]interface{}{"shutdown": true})
		go func() {
			time.Sleep(50 * time.Millisecond)
			close(l.shutdown)
		}()
	default:
		jsonError(w, http.StatusNotFound, "no such lab endpoint: "+r.Method+" "+r.URL.Path)
	}
}

func (l *lab) serveFaults(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		writeJSON(w, http.StatusOK, l.faults.list())
	case http.MethodDelete:
		l.faults.clear()
		writeJSON(w, http.StatusOK, map[string]interface{}{"cleared": true})
	case http.MethodPost:
		var req struct {
			Kind    string `json:"kind"`
			Method  string `json:"method"`
			Fault   string `json:"fault"`
			Message string `json:"message"`
			Path    string `json:"path"`
			DelayMS int    `json:"delay_ms"`
			Count   *int   `json:"count"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			jsonError(w, http.StatusBadRequest, "bad fault request: "+err.Error())
			return
		}
		if req.Kind == "expire-sessions" {
			writeJSON(w, http.StatusOK, map[string]interface{}{"kind": req.Kind, "expired": l.sessions.expireAll()})
			return
		}
		count := 1
		if req.Count != nil {
			count = *req.Count
		}
		armed, err := l.faults.arm(armedFault{
			Kind: req.Kind, Method: req.Method, Fault: req.Fault, Message: req.Message,
			Path: req.Path, DelayMS: req.DelayMS, Remaining: count,
		})
		if err != nil {
			jsonError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, armed)
	default:
		jsonError(w, http.StatusMethodNotAllowed, "use GET, POST or DELETE")
	}
}

func intParam(q map[string][]string, name string, def int) (int, error) {
	v := ""
	if s := q[name]; len(s) > 0 {
		v = s[0]
	}
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, &paramError{name, v}
	}
	return n, nil
}

func int64Param(q map[string][]string, name string) (int64, error) {
	v := ""
	if s := q[name]; len(s) > 0 {
		v = s[0]
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, &paramError{name, v}
	}
	return n, nil
}

type paramError struct{ name, value string }

func (e *paramError) Error() string {
	return "parameter " + e.name + " must be an integer, got " + strconv.Quote(e.value)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func reply(w http.ResponseWriter, res interface{}, err error) {
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func jsonError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
