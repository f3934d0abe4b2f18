package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Redo logs (the lab's -redo-logs mode): a snapshot's delta layer is what
// ESXi writes on VMFS, a "<disk>-00000N.vmdk" descriptor with
// createType="vmfsSparse", parentCID and parentFileNameHint, over a
// "<disk>-00000N-delta.vmdk" sparse extent in the COWD format; the base disk
// stays a flat extent. A layer holds only the grains written while it was
// the current one, so it cannot be read on its own: every read resolves the
// chain (the newest layer holding a grain wins), which is why /folder and a
// mounted datastore cannot serve a snapshot of a disk with redo logs, and
// VDDK can.
//
// The format, as qemu's block/vmdk.c reads it (vmdk_open_vmfs_sparse,
// VMDK3Header) and VMware's "Virtual Disk Format" specification describes
// the COWD header: a 2048-byte little-endian header ("COWD", version 1,
// flags 3, capacity in sectors, sectors per grain, the grain directory's
// sector, its entry count, the next free sector), then the grain directory:
// one 32-bit sector offset of a grain table per 4096 grains (0: none yet),
// each grain table 4096 32-bit sector offsets of grains (0: not in this
// layer). VMFSsparse redo logs use 512-byte grains (one sector), unlike
// seSparse's 4 KiB. Tables and grains are appended as they are first written.

const (
	cowdMagic         = 0x44574f43 // "COWD" read as a little-endian uint32
	cowdHeaderSectors = 4
	cowdTableEntries  = 4096
	sectorSize        = 512
)

// cowd is an open COWD extent.
type cowd struct {
	f          *os.File
	numSectors uint32
	grain      uint32 // sectors per grain
	dir        []uint32
	free       uint32 // next free sector
}

func cowdDirEntries(sectors, grain uint32) uint32 {
	span := uint64(cowdTableEntries) * uint64(grain)
	return uint32((uint64(sectors) + span - 1) / span)
}

// createCOWD writes an empty redo log for a disk of `capacity` bytes.
func createCOWD(path string, capacity int64) error {
	if capacity%sectorSize != 0 || capacity/sectorSize > 0xffffffff {
		return fmt.Errorf("a redo log cannot hold %d bytes", capacity)
	}
	sectors := uint32(capacity / sectorSize)
	entries := cowdDirEntries(sectors, 1)
	dirSectors := (entries*4 + sectorSize - 1) / sectorSize
	header := make([]byte, cowdHeaderSectors*sectorSize)
	le := binary.LittleEndian
	le.PutUint32(header[0:], cowdMagic)
	le.PutUint32(header[4:], 1) // version
	le.PutUint32(header[8:], 3) // flags
	le.PutUint32(header[12:], sectors)
	le.PutUint32(header[16:], 1) // sectors per grain
	le.PutUint32(header[20:], cowdHeaderSectors)
	le.PutUint32(header[24:], entries)
	le.PutUint32(header[28:], cowdHeaderSectors+dirSectors)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	out := append(header, make([]byte, dirSectors*sectorSize)...)
	return os.WriteFile(path, out, 0o644)
}

func openCOWD(path string, write bool) (*cowd, error) {
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, err
	}
	header := make([]byte, 32)
	if _, err := f.ReadAt(header, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: no COWD header: %w", path, err)
	}
	le := binary.LittleEndian
	if le.Uint32(header[0:]) != cowdMagic {
		f.Close()
		return nil, fmt.Errorf("%s is not a COWD redo log", path)
	}
	c := &cowd{f: f, numSectors: le.Uint32(header[12:]), grain: le.Uint32(header[16:]), free: le.Uint32(header[28:])}
	if c.grain != 1 {
		f.Close()
		return nil, fmt.Errorf("%s: grains of %d sectors; the lab writes 1", path, c.grain)
	}
	entries := le.Uint32(header[24:])
	raw := make([]byte, entries*4)
	if _, err := f.ReadAt(raw, int64(le.Uint32(header[20:]))*sectorSize); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: grain directory: %w", path, err)
	}
	c.dir = make([]uint32, entries)
	for i := range c.dir {
		c.dir[i] = le.Uint32(raw[i*4:])
	}
	return c, nil
}

func (c *cowd) Close() error { return c.f.Close() }

// table reads the grain table of directory entry i (nil when none).
func (c *cowd) table(i int) ([]uint32, error) {
	if c.dir[i] == 0 {
		return nil, nil
	}
	raw := make([]byte, cowdTableEntries*4)
	if _, err := c.f.ReadAt(raw, int64(c.dir[i])*sectorSize); err != nil {
		return nil, err
	}
	t := make([]uint32, cowdTableEntries)
	for k := range t {
		t[k] = binary.LittleEndian.Uint32(raw[k*4:])
	}
	return t, nil
}

// grains maps each sector of [from, to) held by this layer to its sector in the file.
func (c *cowd) grains(from, to int64) (map[int64]int64, error) {
	out := map[int64]int64{}
	for i := from / cowdTableEntries; i*cowdTableEntries < to && i < int64(len(c.dir)); i++ {
		t, err := c.table(int(i))
		if err != nil {
			return nil, err
		}
		for k, at := range t {
			s := i*cowdTableEntries + int64(k)
			if at != 0 && s >= from && s < to {
				out[s] = int64(at)
			}
		}
	}
	return out, nil
}

// put writes whole sectors starting at sector s, allocating what this layer lacks.
func (c *cowd) put(s int64, data []byte) error {
	le := binary.LittleEndian
	for n := int64(0); n < int64(len(data))/sectorSize; n++ {
		sec := s + n
		i := int(sec / cowdTableEntries)
		if c.dir[i] == 0 {
			at := c.free
			if err := c.f.Truncate(int64(at+cowdTableEntries*4/sectorSize) * sectorSize); err != nil {
				return err
			}
			c.free += cowdTableEntries * 4 / sectorSize
			var entry [4]byte
			le.PutUint32(entry[:], at)
			if _, err := c.f.WriteAt(entry[:], cowdHeaderSectors*sectorSize+int64(i)*4); err != nil {
				return err
			}
			c.dir[i] = at
		}
		slot := int64(c.dir[i])*sectorSize + (sec%cowdTableEntries)*4
		var entry [4]byte
		if _, err := c.f.ReadAt(entry[:], slot); err != nil {
			return err
		}
		at := le.Uint32(entry[:])
		if at == 0 {
			at = c.free
			c.free++
			le.PutUint32(entry[:], at)
			if _, err := c.f.WriteAt(entry[:], slot); err != nil {
				return err
			}
		}
		if _, err := c.f.WriteAt(data[n*sectorSize:(n+1)*sectorSize], int64(at)*sectorSize); err != nil {
			return err
		}
	}
	var free [4]byte
	le.PutUint32(free[:], c.free)
	_, err := c.f.WriteAt(free[:], 28)
	return err
}

// chainLink is one layer of a disk's chain: a flat extent or a redo log.
type chainLink struct {
	file layerFile
	flat *os.File
	cow  *cowd
}

// diskChain is a disk's backing chain, the newest layer first, open for reading
// (and the newest for writing when opened so).
type diskChain []chainLink

// openChain opens the layer `datastorePath` and every parent its descriptors name.
func openChain(datastorePath string, write bool) (diskChain, error) {
	top, err := resolveLayer(datastorePath)
	if err != nil {
		return nil, err
	}
	var chain diskChain
	for f, depth := top, 0; ; depth++ {
		if depth > 255 {
			chain.Close()
			return nil, fmt.Errorf("%s: the chain does not end", datastorePath)
		}
		link := chainLink{file: f}
		if f.sparse {
			link.cow, err = openCOWD(f.extent, write && depth == 0)
		} else {
			flags := os.O_RDONLY
			if write && depth == 0 {
				flags = os.O_RDWR
			}
			link.flat, err = os.OpenFile(f.extent, flags, 0)
		}
		if err != nil {
			chain.Close()
			return nil, err
		}
		chain = append(chain, link)
		parent, err := parentHint(f.descriptor)
		if err != nil {
			chain.Close()
			return nil, err
		}
		if parent == "" {
			return chain, nil
		}
		f = localLayer(filepath.Join(filepath.Dir(f.descriptor), parent))
	}
}

func (c diskChain) Close() {
	for _, l := range c {
		if l.flat != nil {
			l.flat.Close()
		}
		if l.cow != nil {
			l.cow.Close()
		}
	}
}

// ReadAt reads the disk's bytes at `off` as the chain resolves them.
func (c diskChain) ReadAt(p []byte, off int64) error {
	for i := range p {
		p[i] = 0
	}
	first, last := off/sectorSize, (off+int64(len(p))+sectorSize-1)/sectorSize
	done := map[int64]bool{}
	sector := make([]byte, sectorSize)
	for _, l := range c {
		if l.flat != nil { // a flat layer holds every sector the layers above did not
			buf := make([]byte, len(p))
			if _, err := l.flat.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			for s := first; s < last; s++ {
				if !done[s] {
					lo, hi := max64(s*sectorSize, off)-off, min64((s+1)*sectorSize, off+int64(len(p)))-off
					copy(p[lo:hi], buf[lo:hi])
				}
			}
			return nil
		}
		held, err := l.cow.grains(first, last)
		if err != nil {
			return err
		}
		for s, at := range held {
			if done[s] {
				continue
			}
			if _, err := l.cow.f.ReadAt(sector, at*sectorSize); err != nil {
				return err
			}
			done[s] = true
			lo, hi := max64(s*sectorSize, off), min64((s+1)*sectorSize, off+int64(len(p)))
			copy(p[lo-off:hi-off], sector[lo-s*sectorSize:hi-s*sectorSize])
		}
	}
	return nil
}

// WriteAt writes into the newest layer; a redo log takes whole grains, the
// rest of a partly written grain read through the chain first.
func (c diskChain) WriteAt(p []byte, off int64) error {
	top := c[0]
	if top.flat != nil {
		_, err := top.flat.WriteAt(p, off)
		return err
	}
	lo := off / sectorSize * sectorSize
	hi := (off + int64(len(p)) + sectorSize - 1) / sectorSize * sectorSize
	whole := make([]byte, hi-lo)
	if lo != off || hi != off+int64(len(p)) {
		if err := c.ReadAt(whole, lo); err != nil {
			return err
		}
	}
	copy(whole[off-lo:], p)
	return top.cow.put(lo/sectorSize, whole)
}

// allocated lists the byte ranges of [from, to) that some layer holds.
func (c diskChain) allocated(from, to int64) ([][2]int64, error) {
	var out [][2]int64
	add := func(a, b int64) {
		if n := len(out); n > 0 && out[n-1][1] >= a {
			out[n-1][1] = max64(out[n-1][1], b)
			return
		}
		out = append(out, [2]int64{a, b})
	}
	var ranges [][2]int64
	for _, l := range c {
		if l.flat != nil {
			segs, err := dataSegments(l.file.extent, from, to)
			if err != nil {
				return nil, err
			}
			ranges = append(ranges, segs...)
			continue
		}
		held, err := l.cow.grains(from/sectorSize, (to+sectorSize-1)/sectorSize)
		if err != nil {
			return nil, err
		}
		for s := range held {
			ranges = append(ranges, [2]int64{max64(s*sectorSize, from), min64((s+1)*sectorSize, to)})
		}
	}
	sortRanges(ranges)
	for _, r := range ranges {
		add(r[0], r[1])
	}
	return out, nil
}

func sortRanges(r [][2]int64) {
	sort.Slice(r, func(i, j int) bool { return r[i][0] < r[j][0] })
}

// flattenChain writes the chain-resolved image of `datastorePath` as a flat
// sparse file `dst`: a full clone of a disk that has redo logs.
func flattenChain(datastorePath, dst string, size int64) error {
	chain, err := openChain(datastorePath, false)
	if err != nil {
		return err
	}
	defer chain.Close()
	if chain[0].flat != nil { // a flat top layer is the whole image: the base, or a full copy without -redo-logs
		return copySparse(chain[0].file.extent, dst, size)
	}
	ranges, err := chain.allocated(0, size)
	if err != nil {
		return err
	}
	const step = 4 << 20
	return writeSparse(dst, size, func(out *os.File) error {
		for _, r := range ranges {
			for at := r[0]; at < r[1]; at += step {
				buf := make([]byte, min64(step, r[1]-at))
				if err := chain.ReadAt(buf, at); err != nil {
					return err
				}
				if _, err := out.WriteAt(buf, at); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// foldRedoLog writes the grains of redo log `child` into the layer `parent`
// (flat or a redo log itself): what consolidation does when a snapshot goes.
func foldRedoLog(child, parent layerFile) error {
	src, err := openCOWD(child.extent, false)
	if err != nil {
		return err
	}
	defer src.Close()
	var dst diskChain
	if parent.sparse {
		c, err := openCOWD(parent.extent, true)
		if err != nil {
			return err
		}
		dst = diskChain{{file: parent, cow: c}}
	} else {
		f, err := os.OpenFile(parent.extent, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		dst = diskChain{{file: parent, flat: f}}
	}
	defer dst.Close()
	held, err := src.grains(0, int64(src.numSectors))
	if err != nil {
		return err
	}
	sector := make([]byte, sectorSize)
	for s, at := range held {
		if _, err := src.f.ReadAt(sector, at*sectorSize); err != nil {
			return err
		}
		if err := dst.WriteAt(sector, s*sectorSize); err != nil {
			return err
		}
	}
	return nil
}

// parentHint is the parentFileNameHint of a descriptor, or "" for a base disk.
func parentHint(descriptor string) (string, error) {
	data, err := os.ReadFile(descriptor)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "parentFileNameHint=") {
			return strings.Trim(strings.TrimPrefix(line, "parentFileNameHint="), "\""), nil
		}
	}
	return "", nil
}

// writeRedoLogDescriptor writes a vmfsSparse delta's descriptor.
func writeRedoLogDescriptor(f layerFile, capacity int64, cid, parentCID, parent string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%s\nparentCID=%s\n", cid, parentCID)
	fmt.Fprintf(&b, "createType=\"vmfsSparse\"\nparentFileNameHint=\"%s\"\n", parent)
	fmt.Fprintf(&b, "\n# Extent description\nRW %d VMFSSPARSE \"%s\"\n\n", capacity/sectorSize, filepath.Base(f.extent))
	fmt.Fprintf(&b, "# The Disk Data Base\n#DDB\n\nddb.longContentID = \"%s\"\n", randomHex(16))
	return os.WriteFile(f.descriptor, []byte(b.String()), 0o644)
}

// newRedoLog creates the redo log `deltaPath` over the layer `parent`.
func newRedoLog(deltaPath string, parent layerFile, capacity int64) (layerFile, error) {
	delta := redoLogLayer(deltaPath)
	if err := createCOWD(delta.extent, capacity); err != nil {
		return delta, err
	}
	hint, _ := filepath.Rel(filepath.Dir(delta.descriptor), parent.descriptor)
	if err := writeRedoLogDescriptor(delta, capacity, randomHex(4), descriptorCID(parent.descriptor), hint); err != nil {
		_ = os.Remove(delta.extent)
		return delta, err
	}
	return delta, nil
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}
