package main

import (
	"fmt"
	"testing"

	"github.com/vmware/govmomi/vim25/types"
)

func objects(n int) []types.ObjectContent {
	out := make([]types.ObjectContent, n)
	for i := range out {
		out[i].Obj = types.ManagedObjectReference{Type: "VirtualMachine", Value: fmt.Sprintf("vm-%d", i)}
	}
	return out
}

func TestPageSizeFollowsMaxObjectsWithinVCentersBounds(t *testing.T) {
	for asked, want := range map[int32]int{0: defaultPage, -3: defaultPage, 7: 7, maxPage: maxPage, 5000: maxPage} {
		if got := pageSize(types.RetrieveOptions{MaxObjects: asked}); got != want {
			t.Errorf("maxObjects %d: pages of %d, want %d", asked, got, want)
		}
	}
}

// A result is handed out a page at a time; each token is good once.
func TestAResultComesInPagesFollowedByTokens(t *testing.T) {
	p := newPager()
	first := p.cut(objects(250), 100)
	if len(first.Objects) != 100 || first.Token == "" {
		t.Fatalf("first page: %d objects, token %q", len(first.Objects), first.Token)
	}
	second, fault := p.next(first.Token)
	if fault != nil || len(second.Objects) != 100 || second.Token == "" || second.Objects[0].Obj.Value != "vm-100" {
		t.Fatalf("second page: %+v, %v", second, fault)
	}
	third, fault := p.next(second.Token)
	if fault != nil || len(third.Objects) != 50 || third.Token != "" || third.Objects[49].Obj.Value != "vm-249" {
		t.Fatalf("last page: %d objects, token %q, %v", len(third.Objects), third.Token, fault)
	}
	if _, fault := p.next(first.Token); fault == nil {
		t.Errorf("a token was good twice")
	} else if f, ok := fault.fault.(*types.InvalidArgument); !ok || f.InvalidProperty != "token" {
		t.Errorf("a spent token: %#v", fault.fault)
	}
	if small := p.cut(objects(3), 100); small.Token != "" || len(small.Objects) != 3 {
		t.Errorf("a result within one page got a token")
	}
}

func TestACancelledOrForgottenRetrievalHasNoNextPage(t *testing.T) {
	p := newPager()
	cancelled := p.cut(objects(20), 10)
	p.cancel(cancelled.Token)
	if _, fault := p.next(cancelled.Token); fault == nil {
		t.Errorf("a cancelled retrieval went on")
	}
	oldest := p.cut(objects(20), 10)
	for i := 0; i < maxPending; i++ {
		p.cut(objects(20), 10)
	}
	if _, fault := p.next(oldest.Token); fault == nil {
		t.Errorf("the oldest of %d unfinished retrievals was kept", maxPending+1)
	}
}
