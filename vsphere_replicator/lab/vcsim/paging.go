package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"

	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

const (
	defaultPage = 100  // objects per RetrievePropertiesEx answer when maxObjects is unset
	maxPage     = 1000 // the most the lab returns at once, whatever maxObjects asks
	maxPending  = 256  // unfinished retrievals kept before the oldest is dropped
)

// pager gives RetrievePropertiesEx vCenter's paging, which vcsim lacks: a
// large result comes back a page at a time with a token, and the caller
// must follow it with ContinueRetrievePropertiesEx.
type pager struct {
	mu      sync.Mutex
	pending map[string]*pendingResult
	order   []string
}

type pendingResult struct {
	objects []types.ObjectContent
	page    int
}

func newPager() *pager { return &pager{pending: map[string]*pendingResult{}} }

func pageSize(options types.RetrieveOptions) int {
	n := int(options.MaxObjects)
	switch {
	case n <= 0:
		return defaultPage
	case n > maxPage:
		return maxPage
	}
	return n
}

// first lets vcsim answer the retrieval in the caller's own session (its
// container views live there), then hands back the first page.
func (p *pager) first(w http.ResponseWriter, r *http.Request, body []byte, next http.Handler, req *types.RetrievePropertiesEx) {
	rec := httptest.NewRecorder()
	r.Body = io.NopCloser(bytes.NewReader(body))
	next.ServeHTTP(rec, r)
	var env struct {
		Body struct {
			Res *types.RetrievePropertiesExResponse `xml:"RetrievePropertiesExResponse"`
		} `xml:"Body"`
	}
	dec := xml.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.TypeFunc = types.TypeFunc()
	if rec.Code != http.StatusOK || dec.Decode(&env) != nil || env.Body.Res == nil {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}
	res := env.Body.Res
	if res.Returnval != nil {
		res.Returnval = p.cut(res.Returnval.Objects, pageSize(req.Options))
	}
	writeResult(w, res)
}

func (p *pager) next(token string) (*types.RetrieveResult, *methodFault) {
	p.mu.Lock()
	pending, ok := p.pending[token]
	delete(p.pending, token)
	p.mu.Unlock()
	if !ok {
		return nil, newFault(&types.InvalidArgument{InvalidProperty: "token"}, "unknown or finished retrieval token")
	}
	return p.cut(pending.objects, pending.page), nil
}

func (p *pager) cancel(token string) {
	p.mu.Lock()
	delete(p.pending, token)
	p.mu.Unlock()
}

func (p *pager) cut(objects []types.ObjectContent, page int) *types.RetrieveResult {
	if len(objects) <= page {
		return &types.RetrieveResult{Objects: objects}
	}
	token := randomHex(12)
	p.mu.Lock()
	p.pending[token] = &pendingResult{objects: objects[page:], page: page}
	p.order = append(p.order, token)
	for len(p.order) > maxPending {
		delete(p.pending, p.order[0])
		p.order = p.order[1:]
	}
	p.mu.Unlock()
	return &types.RetrieveResult{Objects: objects[:page], Token: token}
}
