package main

import (
	"context"
	"fmt"
	"net"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	vmNetworkName = "VM Network" // vcsim's standard port group, where every lab VM starts
	drNetworkName = "DR Network" // a second standard port group, for re-mapping replicas
	vSwitchName   = "vSwitch0"
	firstNICKey   = 4000 // vSphere numbers network adapters from 4000
)

// buildNetworks adds the "DR Network" port group to every host's vSwitch0 and
// makes both standard networks list their hosts, as vCenter does. vcsim
// creates a port group on one host only (a second host is a DuplicateName),
// so the other hosts get theirs directly. It returns "VM Network".
func (l *lab) buildNetworks(ctx context.Context, finder *find.Finder, hosts []*object.HostSystem) (types.ManagedObjectReference, error) {
	var none types.ManagedObjectReference
	vmNetworkName, drNetworkName := l.cfg.names().vmNetwork, l.cfg.names().drNetwork
	if len(hosts) == 0 {
		return none, fmt.Errorf("no hosts")
	}
	spec := types.HostPortGroupSpec{Name: drNetworkName, VswitchName: vSwitchName, Policy: types.HostNetworkPolicy{}}
	ns, err := hosts[0].ConfigManager().NetworkSystem(ctx)
	if err != nil {
		return none, err
	}
	if err := ns.AddPortGroup(ctx, spec); err != nil {
		return none, fmt.Errorf("add %s: %w", drNetworkName, err)
	}
	refs := map[string]types.ManagedObjectReference{}
	for _, name := range []string{vmNetworkName, drNetworkName} {
		n, err := finder.Network(ctx, name)
		if err != nil {
			return none, fmt.Errorf("network %s: %w", name, err)
		}
		refs[name] = n.Reference()
	}
	dr := refs[drNetworkName]
	var hostRefs []types.ManagedObjectReference
	for i, h := range hosts {
		hostRefs = append(hostRefs, h.Reference())
		hs, ok := simulator.Map.Get(h.Reference()).(*simulator.HostSystem)
		if !ok {
			return none, fmt.Errorf("host %s not in the registry", h.Reference().Value)
		}
		var netsysRef types.ManagedObjectReference
		simulator.Map.WithLock(hs, func() {
			cfg := hs.Config.Network
			pg := types.HostPortGroup{
				Key:     "key-vim.host.PortGroup-" + drNetworkName,
				Vswitch: "key-vim.host.VirtualSwitch-" + vSwitchName,
				Spec:    spec,
			}
			// vcsim's slices share arrays between hosts, clusters and the
			// datacenter: copy before appending, never append in place.
			cfg.Portgroup = append(append([]types.HostPortGroup(nil), cfg.Portgroup...), pg)
			for j := range cfg.Vswitch {
				if cfg.Vswitch[j].Name == vSwitchName {
					cfg.Vswitch[j].Portgroup = append(append([]string(nil), cfg.Vswitch[j].Portgroup...), pg.Key)
				}
			}
			hs.Network = append(append([]types.ManagedObjectReference(nil), hs.Network...), dr)
			netsysRef = *hs.ConfigManager.NetworkSystem
		})
		netsys, ok := simulator.Map.Get(netsysRef).(*simulator.HostNetworkSystem)
		if !ok {
			continue
		}
		simulator.Map.WithLock(netsys, func() {
			info := netsys.NetworkInfo
			info.Portgroup = append([]types.HostPortGroup(nil), hs.Config.Network.Portgroup...)
			if i == 0 {
				return // AddPortGroup put it on this host's vSwitch already
			}
			for j := range info.Vswitch {
				if info.Vswitch[j].Name == vSwitchName {
					info.Vswitch[j].Portgroup = append(append([]string(nil), info.Vswitch[j].Portgroup...), drNetworkName)
				}
			}
		})
	}
	for _, ref := range refs {
		if n, ok := simulator.Map.Get(ref).(*mo.Network); ok {
			simulator.Map.WithLock(n, func() { n.Host = append([]types.ManagedObjectReference(nil), hostRefs...) })
		}
	}
	for _, cr := range simulator.Map.All("ClusterComputeResource") {
		c := cr.(*simulator.ClusterComputeResource)
		simulator.Map.WithLock(c, func() {
			c.Network = append(append([]types.ManagedObjectReference(nil), c.Network...), dr)
		})
	}
	return refs[vmNetworkName], nil
}

// newNIC is the network adapter every lab VM starts with: a vmxnet3 on a
// standard port group, connected and connecting at power on.
func newNIC(network types.ManagedObjectReference, name string) *types.VirtualVmxnet3 {
	return &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: types.VirtualEthernetCard{
		VirtualDevice: types.VirtualDevice{
			Key:        firstNICKey,
			DeviceInfo: &types.Description{Label: "Network adapter 1", Summary: name},
			Backing: &types.VirtualEthernetCardNetworkBackingInfo{
				VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: name},
				Network:                        &network,
			},
			Connectable: &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true, AllowGuestControl: true, Status: "ok"},
		},
		AddressType: string(types.VirtualEthernetCardMacTypeGenerated),
	}}}
}

// checkNICs validates the network adapters a ReconfigVM_Task adds or edits,
// before vcsim sees them: vcsim looks a standard backing up by name without
// checking it exists (and fails hard when it does not), and takes any
// port group key on a distributed switch. vCenter answers
// InvalidDeviceBacking for a network the VM's host cannot reach.
func checkNICs(vm *simulator.VirtualMachine, spec *types.VirtualMachineConfigSpec) *methodFault {
	var host *types.ManagedObjectReference
	var existing []types.BaseVirtualDevice
	simulator.Map.WithLock(vm, func() {
		host = vm.Runtime.Host
		existing = vm.Config.Hardware.Device
	})
	for i, change := range spec.DeviceChange {
		c := change.GetVirtualDeviceConfigSpec()
		nic, ok := c.Device.(types.BaseVirtualEthernetCard)
		if !ok || (c.Operation != types.VirtualDeviceConfigSpecOperationAdd && c.Operation != types.VirtualDeviceConfigSpecOperationEdit) {
			continue
		}
		card := nic.GetVirtualEthernetCard()
		bad := func(format string, args ...interface{}) *methodFault {
			return newFault(&types.InvalidDeviceBacking{InvalidDeviceSpec: types.InvalidDeviceSpec{
				InvalidVmConfig: types.InvalidVmConfig{Property: "deviceChange"}, DeviceIndex: int32(i)}}, format, args...)
		}
		switch b := card.Backing.(type) {
		case *types.VirtualEthernetCardNetworkBackingInfo:
			network := findStandardNetwork(b)
			if network == nil {
				return bad("network adapter %d: no standard network %q", card.Key, b.DeviceName)
			}
			if !hostHasNetwork(host, network.Self) {
				return bad("network adapter %d: network %q is not available on the VM's host", card.Key, network.Name)
			}
			ref := network.Self
			b.DeviceName, b.Network = network.Name, &ref
		case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
			pg, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}).(*simulator.DistributedVirtualPortgroup)
			if !ok || pg.Config.DistributedVirtualSwitch == nil {
				return bad("network adapter %d: no distributed port group with key %q", card.Key, b.Port.PortgroupKey)
			}
			dvs, ok := simulator.Map.Get(*pg.Config.DistributedVirtualSwitch).(*simulator.DistributedVirtualSwitch)
			if !ok || dvs.Uuid != b.Port.SwitchUuid {
				return bad("network adapter %d: port group %q is not on switch %q", card.Key, b.Port.PortgroupKey, b.Port.SwitchUuid)
			}
			if !hostHasNetwork(host, pg.Self) {
				return bad("network adapter %d: port group %q is not available on the VM's host", card.Key, pg.Name)
			}
		default:
			return bad("network adapter %d: the lab supports standard and distributed port group backings only", card.Key)
		}
		if c.Operation == types.VirtualDeviceConfigSpecOperationEdit && card.DeviceInfo == nil {
			// vcsim rewrites the summary of an edited device and needs its description.
			for _, d := range existing {
				if d.GetVirtualDevice().Key == card.Key && d.GetVirtualDevice().DeviceInfo != nil {
					info := *d.GetVirtualDevice().DeviceInfo.GetDescription()
					card.DeviceInfo = &info
				}
			}
			if card.DeviceInfo == nil {
				card.DeviceInfo = &types.Description{Label: fmt.Sprintf("Network adapter %d", card.Key-firstNICKey+1)}
			}
		}
	}
	return nil
}

// findStandardNetwork resolves a standard backing by its network reference
// or, without one, by its device name.
func findStandardNetwork(b *types.VirtualEthernetCardNetworkBackingInfo) *mo.Network {
	if b.Network != nil {
		n, _ := simulator.Map.Get(*b.Network).(*mo.Network)
		return n
	}
	for _, e := range simulator.Map.All("Network") {
		if n, ok := e.(*mo.Network); ok && n.Name == b.DeviceName {
			return n
		}
	}
	return nil
}

func hostHasNetwork(host *types.ManagedObjectReference, network types.ManagedObjectReference) bool {
	if host == nil {
		return true // a template has no host; placement checks come later
	}
	hs, ok := simulator.Map.Get(*host).(*simulator.HostSystem)
	if !ok {
		return false
	}
	found := false
	simulator.Map.WithLock(hs, func() {
		for _, n := range hs.Network {
			found = found || n == network
		}
	})
	return found
}

// vmNetworks is a VM's "network" property: the networks its adapters use,
// each once, in device order.
func vmNetworks(devices []types.BaseVirtualDevice) []types.ManagedObjectReference {
	var refs []types.ManagedObjectReference
	seen := map[types.ManagedObjectReference]bool{}
	for _, d := range devices {
		nic, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		var ref types.ManagedObjectReference
		switch b := nic.GetVirtualEthernetCard().Backing.(type) {
		case *types.VirtualEthernetCardNetworkBackingInfo:
			if b.Network == nil {
				continue
			}
			ref = *b.Network
		case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
			ref = types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}
		default:
			continue
		}
		if !seen[ref] {
			seen[ref] = true
			refs = append(refs, ref)
		}
	}
	return refs
}

// guestNICs keeps guest.net naming each adapter's current network, as
// VMware Tools reports it; vcsim records the name only when the adapter is added.
func guestNICs(vm *simulator.VirtualMachine) []types.GuestNicInfo {
	names := map[int32]string{}
	for _, d := range vm.Config.Hardware.Device {
		nic, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		card := nic.GetVirtualEthernetCard()
		switch b := card.Backing.(type) {
		case *types.VirtualEthernetCardNetworkBackingInfo:
			names[card.Key] = b.DeviceName
		case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
			if pg, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}).(*simulator.DistributedVirtualPortgroup); ok {
				names[card.Key] = pg.Name
			}
		}
	}
	var out []types.GuestNicInfo
	for _, n := range vm.Guest.Net {
		name, ok := names[n.DeviceConfigId]
		if !ok {
			continue // the adapter is gone
		}
		n.Network = name
		out = append(out, n)
	}
	return out
}

// staticMACRefusal says why ESXi refuses mac as a static ("manual") address,
// or "" when it takes it. vSphere Networking, "VMware OUI in Static MAC
// Addresses": with VMware's OUI 00:50:56 a static address must stay within
// 00:50:56:00:00:00-00:50:56:3F:FF:FF (above is reserved for addresses
// vCenter assigns and for VMkernel adapters); 00:0C:29, 00:05:69 and 00:1C:14
// are what ESXi generates. vCenter takes the reconfiguration; the VM then fails
// to power on with "... is not an allowed static Ethernet address. It
// conflicts with VMware reserved MACs for other usage." (as reported against
// vCenter in ansible-collections/community.vmware#1159).
func staticMACRefusal(mac string) string {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return fmt.Sprintf("%q is not a valid static Ethernet address", mac)
	}
	reserved := hw[0]&1 == 1 // a multicast address is no NIC's
	switch {
	case hw[0] == 0x00 && hw[1] == 0x50 && hw[2] == 0x56:
		reserved = reserved || hw[3] > 0x3f
	case hw[0] == 0x00 && hw[1] == 0x0c && hw[2] == 0x29,
		hw[0] == 0x00 && hw[1] == 0x05 && hw[2] == 0x69,
		hw[0] == 0x00 && hw[1] == 0x1c && hw[2] == 0x14:
		reserved = true
	}
	if reserved {
		return fmt.Sprintf("%s is not an allowed static Ethernet address. It conflicts with VMware reserved MACs for other usage.", mac)
	}
	return ""
}

// checkStaticMACs refuses to power on a VM whose manual MAC address ESXi does not allow.
func checkStaticMACs(vm *simulator.VirtualMachine) *methodFault {
	var reason string
	simulator.Map.WithLock(vm, func() {
		for _, d := range vm.Config.Hardware.Device {
			nic, ok := d.(types.BaseVirtualEthernetCard)
			if !ok {
				continue
			}
			card := nic.GetVirtualEthernetCard()
			if card.AddressType == string(types.VirtualEthernetCardMacTypeManual) && reason == "" {
				reason = staticMACRefusal(card.MacAddress)
			}
		}
	})
	if reason == "" {
		return nil
	}
	return newFault(&types.GenericVmConfigFault{Reason: reason}, "%s", reason)
}
