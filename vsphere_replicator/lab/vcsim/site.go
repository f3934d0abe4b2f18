package main

import (
	"crypto/rand"
	"fmt"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// A site is another vCenter: a lab started with -site NAME names everything
// it has after the site, so that two labs look like the vCenters of two
// data centers do. Two real vCenters never share an instance UUID (vcsim
// draws about.instanceUuid at random for every vCenter model already:
// simulator/service_instance.go), and their inventories are built
// separately, so datacenter, cluster, host, datastore, port group and VM
// names (and the VM UUIDs vcsim derives from a VM's path) differ. The
// default site ("") keeps vcsim's names and the lab's: DC0, DC0_C0_H0,
// primary-ds, "VM Network", lab-vm-0001.

// newInstanceUUID is a vCenter's about.instanceUuid: vcsim's VPX model
// reports one fixed value (simulator/vpx/service_content.go), so every lab
// draws its own, as every vCenter installation has its own.
func newInstanceUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// validSite is a site name: letters and digits, then letters, digits or '-'.
var validSite = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,15}$`)

// siteNames is what one lab calls its inventory.
type siteNames struct {
	datacenter   string // "DC0" or "DC-B"
	primaryDS    string // "primary-ds" or "primary-ds-b"
	secondaryDS  string
	vmNetwork    string // "VM Network" or "VM Network B"
	drNetwork    string
	vmNamePrefix string // "lab-vm-" or "lab-b-vm-"
}

func namesFor(site string) siteNames {
	if site == "" {
		return siteNames{
			datacenter:   "DC0",
			primaryDS:    primaryDatastore,
			secondaryDS:  secondaryDatastore,
			vmNetwork:    vmNetworkName,
			drNetwork:    drNetworkName,
			vmNamePrefix: "lab-vm-",
		}
	}
	lower, upper := strings.ToLower(site), strings.ToUpper(site)
	return siteNames{
		datacenter:   "DC-" + upper,
		primaryDS:    primaryDatastore + "-" + lower,
		secondaryDS:  secondaryDatastore + "-" + lower,
		vmNetwork:    vmNetworkName + " " + upper,
		drNetwork:    drNetworkName + " " + upper,
		vmNamePrefix: "lab-" + lower + "-vm-",
	}
}

func (c *config) names() siteNames { return namesFor(c.site) }

func (c *config) vmName(i int) string { return fmt.Sprintf("%s%04d", c.names().vmNamePrefix, i) }

// nameSite renames what vcsim's model created ("DC0", "DC0_C0",
// "DC0_C0_H0", "DVS0", "DC0_DVPG0", "VM Network") after the site, before
// anything else looks at the inventory: the datacenter's name replaces
// "DC0" at the front of every name, and the standard port group gets the
// site's name on every host.
func (l *lab) nameSite() error {
	if l.cfg.site == "" {
		return nil
	}
	names := l.cfg.names()
	rename := func(old string) string {
		if strings.HasPrefix(old, "DC0") {
			return names.datacenter + strings.TrimPrefix(old, "DC0")
		}
		return names.datacenter + "_" + old // DVS0
	}
	for _, kind := range []string{"Datacenter", "ClusterComputeResource", "HostSystem", "VmwareDistributedVirtualSwitch", "DistributedVirtualSwitch", "DistributedVirtualPortgroup"} {
		for _, e := range simulator.Map.All(kind) {
			entity, ok := e.(mo.Entity)
			if !ok {
				continue
			}
			simulator.Map.WithLock(e, func() {
				name := rename(entity.Entity().Name)
				simulator.Map.Update(e, []types.PropertyChange{{Name: "name", Val: name}})
				// Networks and switches have a Name of their own beside the entity's,
				// and vcsim finds them by either: both change.
				switch o := e.(type) {
				case *simulator.HostSystem:
					o.Summary.Config.Name = name
				case *simulator.DistributedVirtualSwitch:
					o.Name, o.ManagedEntity.Name = name, name
				case *simulator.DistributedVirtualPortgroup:
					o.Name, o.ManagedEntity.Name = name, name
					o.Config.Name = name
				}
			})
		}
	}
	return renameStandardPortGroup(vmNetworkName, names.vmNetwork)
}

// renameStandardPortGroup gives the standard port group `old` the name
// `name`: the Network object and, on every host, the port group, its key
// and its vSwitch's list. vcsim's host configurations share slices, so
// every one is copied before it changes.
func renameStandardPortGroup(old, name string) error {
	var network *mo.Network
	for _, e := range simulator.Map.All("Network") {
		if n, ok := e.(*mo.Network); ok && n.Name == old {
			network = n
		}
	}
	if network == nil {
		return fmt.Errorf("no standard port group %q to rename", old)
	}
	simulator.Map.WithLock(network, func() {
		simulator.Map.Update(network, []types.PropertyChange{{Name: "name", Val: name}})
		network.Name, network.ManagedEntity.Name = name, name
	})
	renameIn := func(portgroups []types.HostPortGroup, vswitches []types.HostVirtualSwitch) ([]types.HostPortGroup, []types.HostVirtualSwitch) {
		pgs := append([]types.HostPortGroup(nil), portgroups...)
		for i := range pgs {
			if pgs[i].Spec.Name == old {
				pgs[i].Spec.Name = name
				pgs[i].Key = "key-vim.host.PortGroup-" + name
			}
		}
		vss := append([]types.HostVirtualSwitch(nil), vswitches...)
		for i := range vss {
			names := append([]string(nil), vss[i].Portgroup...)
			for j := range names {
				switch names[j] {
				case old:
					names[j] = name
				case "key-vim.host.PortGroup-" + old:
					names[j] = "key-vim.host.PortGroup-" + name
				}
			}
			vss[i].Portgroup = names
		}
		return pgs, vss
	}
	for _, e := range simulator.Map.All("HostSystem") {
		hs := e.(*simulator.HostSystem)
		var netsysRef *types.ManagedObjectReference
		simulator.Map.WithLock(hs, func() {
			if hs.Config != nil && hs.Config.Network != nil {
				network := *hs.Config.Network
				network.Portgroup, network.Vswitch = renameIn(network.Portgroup, network.Vswitch)
				config := *hs.Config
				config.Network = &network
				hs.Config = &config
			}
			netsysRef = hs.ConfigManager.NetworkSystem
		})
		if netsysRef == nil {
			continue
		}
		if netsys, ok := simulator.Map.Get(*netsysRef).(*simulator.HostNetworkSystem); ok {
			simulator.Map.WithLock(netsys, func() {
				if netsys.NetworkInfo == nil {
					return
				}
				info := *netsys.NetworkInfo
				info.Portgroup, info.Vswitch = renameIn(info.Portgroup, info.Vswitch)
				netsys.NetworkInfo = &info
			})
		}
	}
	return nil
}
