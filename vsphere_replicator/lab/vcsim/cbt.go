package main

import (
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
)

// epochs are numbered lab-wide so that no epoch is ever reused, whatever
// reverts, resets and re-enables happen to a disk.
var lastEpoch uint32

func nextEpoch() uint32 { return atomic.AddUint32(&lastEpoch, 1) }

// cbtTracker is Changed Block Tracking for one disk: the epoch in which each
// block was last written. Every stun (snapshot create/remove, power on,
// revert) starts a new epoch; a change id names an epoch ("<uuid>/<seq>").
//
// A revert does what ESXi does, not what a backup application would wish:
// the tracking state comes back as the snapshot froze it (the restored
// layer's own tracking) and carries on with the same identity, so change ids
// handed out on the branch the revert discarded stay valid (see knows and
// the revert rule in docs/lab.md).
type cbtTracker struct {
	uuid   string
	seq    uint32
	block  int64
	epochs []uint32
}

// cbtFrozen is the tracker as it stood when a snapshot was taken.
type cbtFrozen struct {
	uuid   string
	seq    uint32
	block  int64
	epochs []uint32
}

func newCBTUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] = 0x52 // vSphere's change ids start with "52"
	parts := make([]string, 16)
	for i, v := range b {
		parts[i] = fmt.Sprintf("%02x", v)
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

func newTracker(capacity, block int64) *cbtTracker {
	seq := nextEpoch()
	return &cbtTracker{
		uuid:   newCBTUUID(),
		seq:    seq,
		block:  block,
		epochs: make([]uint32, blocksFor(capacity, block)),
	}
}

func blocksFor(capacity, block int64) int64 { return (capacity + block - 1) / block }

func (t *cbtTracker) changeID() string { return fmt.Sprintf("%s/%d", t.uuid, t.seq) }

// stun opens a new epoch.
func (t *cbtTracker) stun() { t.seq = nextEpoch() }

func (t *cbtTracker) recordWrite(offset, length int64) {
	if length <= 0 {
		return
	}
	first, last := offset/t.block, (offset+length-1)/t.block
	for b := first; b <= last && b < int64(len(t.epochs)); b++ {
		t.epochs[b] = t.seq
	}
}

func (t *cbtTracker) resize(capacity int64) {
	n := blocksFor(capacity, t.block)
	if n > int64(len(t.epochs)) {
		t.epochs = append(t.epochs, make([]uint32, n-int64(len(t.epochs)))...)
	}
}

func (t *cbtTracker) freeze() *cbtFrozen {
	return &cbtFrozen{
		uuid:   t.uuid,
		seq:    t.seq,
		block:  t.block,
		epochs: append([]uint32(nil), t.epochs...),
	}
}

// restore makes the live tracker continue from a snapshot's state (revert):
// the per-block record of the restored layer, under the same identity. What
// the discarded branch wrote is forgotten, although the revert changed those
// blocks back; a new epoch keeps the writes after the revert apart.
func (t *cbtTracker) restore(f *cbtFrozen, capacity int64) {
	t.uuid = f.uuid
	t.block = f.block
	t.epochs = append([]uint32(nil), f.epochs...)
	t.resize(capacity)
	t.stun()
}

type parsedChangeID struct {
	all  bool
	uuid string
	seq  uint32
}

func parseChangeID(id string) (parsedChangeID, bool) {
	if id == "*" {
		return parsedChangeID{all: true}, true
	}
	slash := strings.LastIndex(id, "/")
	if slash <= 0 {
		return parsedChangeID{}, false
	}
	seq, err := strconv.ParseUint(id[slash+1:], 10, 32)
	if err != nil {
		return parsedChangeID{}, false
	}
	return parsedChangeID{uuid: id[:slash], seq: uint32(seq)}, true
}

// knows reports whether ESXi would accept a change id against this state:
// it carries the disk's tracking identity and names no epoch after the
// state's own. That is all ESXi checks. A revert keeps the identity, so a
// change id issued on the branch it discarded is accepted, and changedSince
// then answers from the restored layer's record, which omits every block the
// revert put back: the inconsistent incremental of VMware's KB "Reverting to
// a pre-existing snapshot under specific conditions can cause incremental
// backups based on CBT (Changed Block Tracking) to become inconsistent"
// (its workaround: a full backup after a revert), and since vSphere 6.5
// QueryChangedDiskAreas no longer faults on CBT data it cannot vouch for
// (Veritas Backup Exec article 100033474). Only a new identity (a CBT reset,
// `lab cbt-reset`) or a malformed or future id is refused.
func (f *cbtFrozen) knows(id parsedChangeID) bool {
	return id.uuid == f.uuid && id.seq <= f.seq
}

// changedSince returns the block-aligned extents in [start, end) written after epoch seq.
func (f *cbtFrozen) changedSince(seq uint32, start, end int64) [][2]int64 {
	var out [][2]int64
	first, last := start/f.block, (end-1)/f.block
	for b := first; b <= last && b < int64(len(f.epochs)); b++ {
		if f.epochs[b] <= seq {
			continue
		}
		s, e := b*f.block, (b+1)*f.block
		if s < start {
			s = start
		}
		if e > end {
			e = end
		}
		if n := len(out); n > 0 && out[n-1][1] == s {
			out[n-1][1] = e
		} else {
			out = append(out, [2]int64{s, e})
		}
	}
	return out
}

// alignExtents rounds byte ranges out to blocks, clipped to [start, end), merged.
func alignExtents(segs [][2]int64, block, start, end int64) [][2]int64 {
	var out [][2]int64
	for _, seg := range segs {
		s := seg[0] / block * block
		e := (seg[1] + block - 1) / block * block
		if s < start {
			s = start
		}
		if e > end {
			e = end
		}
		if s >= e {
			continue
		}
		if n := len(out); n > 0 && out[n-1][1] >= s {
			if e > out[n-1][1] {
				out[n-1][1] = e
			}
		} else {
			out = append(out, [2]int64{s, e})
		}
	}
	return out
}
