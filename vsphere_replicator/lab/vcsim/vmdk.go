package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// A lab disk layer is a VMware text descriptor ("<name>.vmdk") plus one flat
// extent ("<name>-flat.vmdk") holding the full image at that point, as a
// sparse file. Delta layers are full images too (copied, sparse-aware, when
// the snapshot is taken), so every layer can be read on its own over /folder
// or by qemu-img; only the copy cost differs from ESXi's redo logs.

type layerFile struct {
	datastorePath string // "[ds] dir/name.vmdk"
	descriptor    string // local path of the descriptor
	extent        string // local path of the extent: "-flat.vmdk", or "-delta.vmdk" for a redo log
	sparse        bool   // the extent is a redo log (redolog.go)
}

func datastoreDir(name string) (string, error) {
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name == name {
			return ds.Info.GetDatastoreInfo().Url, nil
		}
	}
	return "", fmt.Errorf("datastore %q not found", name)
}

func resolveLayer(datastorePath string) (layerFile, error) {
	var p object.DatastorePath
	if !p.FromString(datastorePath) || p.Path == "" {
		return layerFile{}, fmt.Errorf("invalid datastore path %q", datastorePath)
	}
	dir, err := datastoreDir(p.Datastore)
	if err != nil {
		return layerFile{}, err
	}
	f := localLayer(filepath.Join(dir, filepath.FromSlash(p.Path)))
	f.datastorePath = datastorePath
	return f, nil
}

// localLayer is the layer whose descriptor is the local file `desc`: a redo
// log when its "-delta.vmdk" extent exists, else a flat disk.
func localLayer(desc string) layerFile {
	base := strings.TrimSuffix(desc, ".vmdk")
	if _, err := os.Stat(base + "-delta.vmdk"); err == nil {
		return layerFile{descriptor: desc, extent: base + "-delta.vmdk", sparse: true}
	}
	return layerFile{descriptor: desc, extent: base + "-flat.vmdk"}
}

// redoLogLayer is the layer `datastorePath` made a redo log (before its files exist).
func redoLogLayer(datastorePath string) layerFile {
	f, _ := resolveLayer(datastorePath)
	base := strings.TrimSuffix(f.descriptor, ".vmdk")
	f.extent, f.sparse = base+"-delta.vmdk", true
	return f
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// newDiskUUID returns a disk uuid in vSphere's dashed form.
func newDiskUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// writeDescriptor writes a VMFS flat descriptor that qemu-img and VMware
// tools read. parent is the parent layer's descriptor file name, or "".
func writeDescriptor(f layerFile, capacity int64, cid, parentCID, parent string) error {
	sectors := capacity / 512
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%s\nparentCID=%s\n", cid, parentCID)
	b.WriteString("createType=\"vmfs\"\n")
	if parent != "" {
		fmt.Fprintf(&b, "parentFileNameHint=\"%s\"\n", parent)
	}
	fmt.Fprintf(&b, "\n# Extent description\nRW %d VMFS \"%s\"\n\n", sectors, filepath.Base(f.extent))
	cylinders := sectors / (255 * 63)
	if cylinders > 65535 {
		cylinders = 65535
	}
	fmt.Fprintf(&b, "# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n"+
		"ddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n"+
		"ddb.longContentID = \"%s\"\nddb.thinProvisioned = \"1\"\nddb.virtualHWVersion = \"13\"\n",
		cylinders, randomHex(16))
	if err := os.MkdirAll(filepath.Dir(f.descriptor), 0o755); err != nil {
		return err
	}
	return os.WriteFile(f.descriptor, []byte(b.String()), 0o644)
}

// descriptorCID reads the CID of a descriptor so a child can name its parent.
func descriptorCID(desc string) string {
	data, err := os.ReadFile(desc)
	if err != nil {
		return "ffffffff"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "CID=") {
			return strings.TrimPrefix(line, "CID=")
		}
	}
	return "ffffffff"
}

// createDiskFiles writes an empty (all-zero, unallocated) base disk for a device.
func (l *lab) createDiskFiles(disk *types.VirtualDisk) error {
	b := diskBacking(disk)
	if b == nil {
		return fmt.Errorf("disk %d has no flat backing", disk.Key)
	}
	f, err := resolveLayer(b.FileName)
	if err != nil {
		return err
	}
	if err := writeDescriptor(f, disk.CapacityInBytes, randomHex(4), "ffffffff", ""); err != nil {
		return err
	}
	out, err := os.OpenFile(f.extent, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	return out.Truncate(disk.CapacityInBytes)
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// dataSegments lists the allocated byte ranges of a sparse file within [from, to).
func dataSegments(path string, from, to int64) ([][2]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var segs [][2]int64
	off := from
	for off < to {
		start, err := f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break
			}
			return nil, err
		}
		if start >= to {
			break
		}
		end, err := f.Seek(start, seekHole)
		if err != nil {
			return nil, err
		}
		if end > to {
			end = to
		}
		segs = append(segs, [2]int64{start, end})
		off = end
	}
	return segs, nil
}

// copySparse copies src to dst (created or truncated to size) copying only
// allocated ranges, so a copy costs what the disk holds, not its capacity.
func copySparse(src, dst string, size int64) error {
	segs, err := dataSegments(src, 0, size)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeSparse(dst, size, func(out *os.File) error {
		for _, s := range segs {
			if _, err := in.Seek(s[0], io.SeekStart); err != nil {
				return err
			}
			if _, err := out.Seek(s[0], io.SeekStart); err != nil {
				return err
			}
			// os.File.ReadFrom uses copy_file_range for a LimitedReader over a file.
			if _, err := io.Copy(out, io.LimitReader(in, s[1]-s[0])); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeSparse makes dst a sparse file of `size` bytes that `fill` writes,
// through "dst.partial" renamed at the end: a copy interrupted half-way
// leaves no dst that looks whole.
func writeSparse(dst string, size int64, fill func(out *os.File) error) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".partial"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := out.Truncate(size); err == nil {
		err = fill(out)
	}
	if err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// baseDiskName strips a delta suffix: "vm_1-000003.vmdk" -> "vm_1".
func baseDiskName(p string) string {
	name := strings.TrimSuffix(path.Base(p), ".vmdk")
	// Six digits exactly: "lab-vm-0004_1" is a base disk, not a delta of "lab-vm".
	if i := strings.LastIndex(name, "-"); i > 0 && len(name)-i == 7 && strings.Trim(name[i+1:], "0123456789") == "" {
		return name[:i]
	}
	return name
}

// nextDeltaPath picks "<dir>/<base>-00000N.vmdk" with the lowest unused N.
func nextDeltaPath(homeDatastorePath string, base string) (string, error) {
	var home object.DatastorePath
	home.FromString(homeDatastorePath)
	for n := 1; n < 1000000; n++ {
		candidate := object.DatastorePath{Datastore: home.Datastore, Path: path.Join(home.Path, fmt.Sprintf("%s-%06d.vmdk", base, n))}
		f, err := resolveLayer(candidate.String())
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(f.descriptor); os.IsNotExist(err) {
			return candidate.String(), nil
		}
	}
	return "", fmt.Errorf("no free delta name for %s", base)
}

// vmHome is the VM's directory as a datastore path, e.g. "[primary-ds] lab-vm-0001".
func vmHome(vm *simulator.VirtualMachine) string {
	var p object.DatastorePath
	p.FromString(vm.Config.Files.VmPathName)
	p.Path = path.Dir(p.Path)
	return p.String()
}

func removeLayer(datastorePath string) {
	f, err := resolveLayer(datastorePath)
	if err != nil {
		return
	}
	_ = os.Remove(f.descriptor)
	_ = os.Remove(f.extent)
}

// rewriteParent points a descriptor at a new parent, keeping everything else.
func rewriteParent(desc, hint, parentCID string) error {
	data, err := os.ReadFile(desc)
	if err != nil {
		return err
	}
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		switch {
		case strings.HasPrefix(line, "parentCID="):
			lines[i] = "parentCID=" + parentCID
		case strings.HasPrefix(line, "parentFileNameHint="):
			lines[i] = fmt.Sprintf("parentFileNameHint=\"%s\"", hint)
		}
	}
	return os.WriteFile(desc, []byte(strings.Join(lines, "\n")), 0o644)
}
