// Command vrlab is the vsphere_replicator lab: govmomi's vcsim extended with
// real disk data, vSphere snapshot semantics, Changed Block Tracking, clones
// that copy bytes, and fault injection. The Python package starts it; see
// docs/lab.md for what it models.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // vcsim's /rest endpoint: sessions and tagging
	"github.com/vmware/govmomi/vim25"
)

type config struct {
	stateDir   string
	listen     string
	vms        int
	disksPerVM int
	diskSize   int64
	hosts      int
	cbtWindow  int64
	cbtBlock   int64
	user       string
	password   string
	poweredOff bool
	latency    time.Duration
	// dcFolder puts the datacenter inside this folder path ("Sites"): its
	// dcPath becomes "Sites/DC0". Empty: the datacenter is in the root folder.
	dcFolder string
	// lockRunningDisks refuses /folder reads of a powered-on VM's current
	// disk layer, as the host holding its lock makes vCenter do (folder.go).
	lockRunningDisks bool
	// redoLogs makes snapshot layers redo logs (vmfsSparse over COWD
	// extents, redolog.go) instead of full flat images.
	redoLogs bool
	// datastoreKinds is each datastore's kind (vmfs, nfs, vsan) when not
	// vmfs; a name beyond primary-ds and secondary-ds adds a datastore.
	datastoreKinds nameValues
	// starAnswers overrides a datastore's answer to changeId="*".
	starAnswers nameValues
	// site names this lab's inventory after another vCenter's (site.go).
	site string
}

// labInfo is what lab.json holds: everything a client needs to connect.
type labInfo struct {
	URL        string            `json:"url"`
	Host       string            `json:"host"`
	Port       int               `json:"port"`
	User       string            `json:"user"`
	Password   string            `json:"password"`
	CAFile     string            `json:"ca_file"`
	Datacenter string            `json:"datacenter"`
	Datastores map[string]string `json:"datastores"`
	Site       string            `json:"site"`
	InstanceID string            `json:"instance_uuid"`
	PID        int               `json:"pid"`
	StateDir   string            `json:"state_dir"`
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.stateDir, "state-dir", "", "directory for datastores, TLS material and lab.json (required)")
	flag.StringVar(&c.listen, "listen", "127.0.0.1:0", "address to listen on (loopback only)")
	flag.IntVar(&c.vms, "vms", 4, "number of virtual machines")
	flag.IntVar(&c.disksPerVM, "disks-per-vm", 1, "virtual disks per VM")
	flag.Int64Var(&c.diskSize, "disk-size", 64<<20, "capacity of each disk in bytes")
	flag.IntVar(&c.hosts, "hosts", 2, "hosts in the cluster")
	flag.Int64Var(&c.cbtWindow, "cbt-window", 16<<20, "bytes of disk covered by one QueryChangedDiskAreas answer")
	flag.Int64Var(&c.cbtBlock, "cbt-block", 64<<10, "Changed Block Tracking granularity in bytes")
	flag.StringVar(&c.user, "user", "administrator@vsphere.local", "login user")
	flag.StringVar(&c.password, "password", "", "login password (random when empty)")
	flag.BoolVar(&c.poweredOff, "powered-off", false, "leave the VMs powered off")
	flag.DurationVar(&c.latency, "latency", 0, "added to every SOAP call, as a WAN link and a busy vCenter would (e.g. 5ms)")
	flag.StringVar(&c.dcFolder, "dc-folder", "", "put the datacenter inside this folder path (e.g. Sites): its dcPath becomes Sites/DC0")
	flag.BoolVar(&c.lockRunningDisks, "lock-running-disks", false, "refuse /folder reads of a powered-on VM's current disk layer with 500, as vCenter does")
	flag.BoolVar(&c.redoLogs, "redo-logs", false, "make snapshot layers vmfsSparse redo logs, as ESXi does, instead of full flat images")
	flag.Var(&c.datastoreKinds, "datastore-kind", "NAME=vmfs|nfs|vsan, repeatable: a datastore's kind; a new NAME adds a datastore")
	flag.Var(&c.starAnswers, "star-answer", "NAME=allocated|whole|fault, repeatable: what QueryChangedDiskAreas(changeId=\"*\") answers for disks on NAME")
	flag.StringVar(&c.site, "site", "", "name the inventory after this site (another vCenter): DC-B, primary-ds-b, VM Network B, lab-b-vm-0001")
	flag.Parse()
	return c
}

func validate(c *config) error {
	switch {
	case c.stateDir == "":
		return fmt.Errorf("-state-dir is required")
	case c.vms < 0 || c.vms > 10000:
		return fmt.Errorf("-vms must be between 0 and 10000")
	case c.disksPerVM < 1 || c.disksPerVM > 15:
		return fmt.Errorf("-disks-per-vm must be between 1 and 15")
	case c.diskSize < 1<<20 || c.diskSize%512 != 0:
		return fmt.Errorf("-disk-size must be at least 1 MiB and a multiple of 512")
	case c.latency < 0 || c.latency > 10*time.Second:
		return fmt.Errorf("-latency must be between 0 and 10s")
	case c.hosts < 1 || c.hosts > 64:
		return fmt.Errorf("-hosts must be between 1 and 64")
	case c.cbtBlock < 512 || c.cbtBlock&(c.cbtBlock-1) != 0:
		return fmt.Errorf("-cbt-block must be a power of two of at least 512")
	case c.cbtWindow < c.cbtBlock || c.cbtWindow%c.cbtBlock != 0:
		return fmt.Errorf("-cbt-window must be a positive multiple of -cbt-block")
	case c.site != "" && !validSite.MatchString(c.site):
		return fmt.Errorf("-site must be 1 to 16 letters, digits or '-', starting with a letter or digit")
	case !validFolderPath(c.dcFolder):
		return fmt.Errorf("-dc-folder must be folder names separated by /, without empty names, %%2f or more than 8 levels")
	}
	if err := validateDatastoreOptions(c); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(c.listen)
	if err != nil {
		return fmt.Errorf("-listen: %v", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen must be a loopback address, got %q", host)
	}
	if c.password == "" {
		b := make([]byte, 12)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		c.password = hex.EncodeToString(b)
	}
	return nil
}

// validFolderPath accepts "" or names joined by "/"; a name cannot hold
// "/" (vSphere escapes it as %2f in names, which the lab does not model).
func validFolderPath(p string) bool {
	if p == "" {
		return true
	}
	names := strings.Split(p, "/")
	if len(names) > 8 {
		return false
	}
	for _, name := range names {
		if strings.TrimSpace(name) == "" || len(name) > 80 || strings.Contains(strings.ToLower(name), "%2f") {
			return false
		}
	}
	return true
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	cfg := parseFlags()
	if err := validate(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, "vrlab:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		log.Printf("vrlab: %v", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	stateDir, err := filepath.Abs(cfg.stateDir)
	if err != nil {
		return err
	}
	infoPath := filepath.Join(stateDir, "lab.json")
	_ = os.Remove(infoPath)
	dsRoot := filepath.Join(stateDir, "datastores")
	// Inventory is not persistent, so leftovers of an earlier lab would be orphans.
	if err := os.RemoveAll(dsRoot); err != nil {
		return err
	}
	tlsDir := filepath.Join(stateDir, "tls")
	tlsConfig, caFile, err := generateTLS(tlsDir)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}

	l, server, err := newLabServer(cfg, tlsConfig)
	if err != nil {
		return err
	}
	defer server.Close()

	ctx := context.Background()
	started := time.Now()
	inv, err := l.buildInventory(ctx, dsRoot)
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	log.Printf("inventory of %d VMs ready in %s", cfg.vms, time.Since(started).Round(time.Millisecond))

	_, portText, _ := net.SplitHostPort(server.URL.Host)
	port, _ := strconv.Atoi(portText)
	host := "127.0.0.1"
	info := labInfo{
		URL:        fmt.Sprintf("https://%s/sdk", net.JoinHostPort(host, portText)),
		Host:       host,
		Port:       port,
		User:       cfg.user,
		Password:   cfg.password,
		CAFile:     caFile,
		Datacenter: inv.datacenter,
		Datastores: inv.datastores,
		Site:       cfg.site,
		InstanceID: inv.instanceUUID,
		PID:        os.Getpid(),
		StateDir:   stateDir,
	}
	if err := writeJSONAtomic(infoPath, info); err != nil {
		return err
	}
	// stdout is lab.log: the password stays in lab.json (0600) and out of logs.
	shown := info
	shown.Password = "(in lab.json)"
	line, _ := json.Marshal(shown)
	fmt.Println(string(line))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case <-l.shutdown:
	}
	_ = os.Remove(infoPath)
	log.Printf("shutting down")
	return nil
}

// newLabServer creates vcsim's model and server, with every request routed
// through the lab before vcsim sees it. The Go tests start it the same way.
func newLabServer(cfg config, tlsConfig *tls.Config) (*lab, *simulator.Server, error) {
	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = cfg.hosts
	model.Host = 0
	model.Datastore = 0
	model.Machine = 0
	model.Portgroup = 1
	model.ServiceContent.About.InstanceUuid = newInstanceUUID()
	if err := model.Create(); err != nil {
		return nil, nil, fmt.Errorf("model: %w", err)
	}
	model.Service.Listen = &url.URL{Host: cfg.listen, User: url.UserPassword(cfg.user, cfg.password)}
	model.Service.TLS = tlsConfig
	model.Service.RegisterEndpoints = true // mounts vcsim's /rest handler, which /api is served through
	server := model.Service.NewServer()
	inproc, err := vim25.NewClient(context.Background(), model.Service)
	if err != nil {
		server.Close()
		return nil, nil, err
	}
	l := newLab(cfg, inproc)
	server.Config.Handler = l.handler(server.Config.Handler)
	return l, server, nil
}

func writeJSONAtomic(path string, v interface{}) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
