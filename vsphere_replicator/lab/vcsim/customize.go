package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Guest customization: CustomizeVM_Task, and spec.customization in
// CloneVM_Task, with a LinuxPrep or Sysprep identity, one adapter mapping
// per network adapter (a fixed IPv4 address with its subnet mask and
// gateways, or DHCP) and global DNS settings. As in vSphere:
//
//   - the VM must be powered off (vcsim answers InvalidPowerState, as
//     vCenter does: the customization runs at the next power-on);
//   - a second customization while one waits for the power-on fails with
//     CustomizationPending ("A customization operation is already pending
//     on this virtual machine and is awaiting power-up to complete");
//   - nicSettingMap must have one entry per network adapter of the VM, else
//     NicSettingMismatch (numberOfNicsInSpec, numberOfNicsInVM); an entry
//     with a macAddress customizes the adapter with that MAC;
//   - a Linux identity on a Windows guest, or Sysprep on a non-Windows one,
//     is UncustomizableGuest; names and generators that need a vCenter-side
//     generator or a prompt (custom, unknown) are IpHostnameGeneratorError:
//     the lab's vCenter has none configured;
//   - a malformed address, mask, gateway, DNS server or host name is
//     InvalidArgument naming the property.
//
// config.tools.pendingCustomization is set until the next power-on; then
// the guest reports what it was given: guest.hostName, guest.ipAddress,
// guest.net[].ipAddress and ipConfig (with the prefix length of the mask),
// dnsConfig, and guest.ipStack with the DNS settings and the default route.
// DHCP adapters get an address from the lab's range 172.16.0.0/16 (each lab
// leases its own, a lease per adapter that lasts). Until that power-on the
// guest information is unchanged, and it stays customized afterwards.

const dhcpPrefix = 16

var dhcpBase = net.IPv4(172, 16, 0, 10).To4()

// RFC 1123 host name label, as vSphere's customization accepts them.
var hostLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

type guestNIC struct {
	address    string // "" while DHCP has not leased one
	prefix     int32
	dhcp       bool
	gateways   []string
	dnsServers []string
	dnsDomain  string
}

// guestIdentity is what a customized guest reports.
type guestIdentity struct {
	hostName   string
	domain     string
	dnsServers []string
	dnsSuffix  []string
	nics       map[int32]*guestNIC // by device key
	order      []int32
}

func customizationFault(fault types.BaseMethodFault, format string, args ...interface{}) *methodFault {
	return newFault(fault, format, args...)
}

func invalidCustomization(property, format string, args ...interface{}) *methodFault {
	return newFault(&types.InvalidArgument{InvalidProperty: property}, format, args...)
}

func isWindowsGuest(guestID string) bool { return strings.HasPrefix(strings.ToLower(guestID), "win") }

// nonLinux are guest ids LinuxPrep cannot customize besides Windows.
var nonLinux = []string{"darwin", "freebsd", "solaris", "netware", "os2", "dos", "otherguest", "vmkernel", "ecomstation"}

func isLinuxGuest(guestID string) bool {
	id := strings.ToLower(guestID)
	if isWindowsGuest(id) {
		return false
	}
	for _, p := range nonLinux {
		if strings.HasPrefix(id, p) {
			return false
		}
	}
	return true
}

func customizedName(vmName string, name types.BaseCustomizationName, property string) (string, *methodFault) {
	switch n := name.(type) {
	case *types.CustomizationFixedName:
		if !hostLabel.MatchString(n.Name) {
			return "", invalidCustomization(property, "%q is not a valid host name", n.Name)
		}
		return n.Name, nil
	case *types.CustomizationVirtualMachineName:
		label := strings.Trim(regexp.MustCompile(`[^A-Za-z0-9-]+`).ReplaceAllString(vmName, "-"), "-")
		if len(label) > 63 {
			label = label[:63]
		}
		if !hostLabel.MatchString(label) {
			return "", invalidCustomization(property, "the VM name %q gives no valid host name", vmName)
		}
		return label, nil
	case *types.CustomizationPrefixName:
		if !hostLabel.MatchString(n.Base) {
			return "", invalidCustomization(property, "%q is not a valid host name prefix", n.Base)
		}
		return fmt.Sprintf("%s-%d", n.Base, 1), nil
	case nil:
		return "", invalidCustomization(property, "a host name is required")
	default:
		return "", customizationFault(&types.IpHostnameGeneratorError{}, "no host name generator is configured for %T", name)
	}
}

func checkIPv4(text, property string) (net.IP, *methodFault) {
	ip := net.ParseIP(text)
	if ip == nil || ip.To4() == nil {
		return nil, invalidCustomization(property, "%q is not an IPv4 address", text)
	}
	return ip.To4(), nil
}

func checkIPv4List(list []string, property string) *methodFault {
	for _, text := range list {
		if _, fault := checkIPv4(text, property); fault != nil {
			return fault
		}
	}
	return nil
}

// planCustomization validates `spec` for the VM (its guest id, name and
// network adapters) and returns the identity its guest will report.
func planCustomization(vmName, guestID string, devices []types.BaseVirtualDevice, spec *types.CustomizationSpec) (*guestIdentity, *methodFault) {
	id := &guestIdentity{nics: map[int32]*guestNIC{}}
	var fault *methodFault
	switch identity := spec.Identity.(type) {
	case *types.CustomizationLinuxPrep:
		if !isLinuxGuest(guestID) {
			return nil, customizationFault(&types.UncustomizableGuest{UncustomizableGuestOS: guestID}, "a Linux customization cannot customize a %s guest", guestID)
		}
		if id.hostName, fault = customizedName(vmName, identity.HostName, "spec.identity.hostName"); fault != nil {
			return nil, fault
		}
		if identity.Domain == "" {
			return nil, invalidCustomization("spec.identity.domain", "a Linux customization needs a domain")
		}
		id.domain = identity.Domain
	case *types.CustomizationSysprep:
		if !isWindowsGuest(guestID) {
			return nil, customizationFault(&types.UncustomizableGuest{UncustomizableGuestOS: guestID}, "Sysprep cannot customize a %s guest", guestID)
		}
		if identity.UserData.FullName == "" || identity.UserData.OrgName == "" {
			return nil, invalidCustomization("spec.identity.userData", "Sysprep needs the user's fullName and orgName")
		}
		if id.hostName, fault = customizedName(vmName, identity.UserData.ComputerName, "spec.identity.userData.computerName"); fault != nil {
			return nil, fault
		}
		if identity.Identification.JoinWorkgroup == "" && identity.Identification.JoinDomain == "" {
			return nil, invalidCustomization("spec.identity.identification", "Sysprep needs a workgroup or a domain to join")
		}
		id.domain = identity.Identification.JoinDomain
	case *types.CustomizationSysprepText:
		return nil, customizationFault(&types.UncustomizableGuest{UncustomizableGuestOS: guestID}, "the lab does not run Sysprep answer files (sysprepText)")
	default:
		return nil, invalidCustomization("spec.identity", "a LinuxPrep or Sysprep identity is required")
	}
	if fault := checkIPv4List(spec.GlobalIPSettings.DnsServerList, "spec.globalIPSettings.dnsServerList"); fault != nil {
		return nil, fault
	}
	id.dnsServers = spec.GlobalIPSettings.DnsServerList
	id.dnsSuffix = spec.GlobalIPSettings.DnsSuffixList

	var cards []*types.VirtualEthernetCard
	for _, d := range devices {
		if nic, ok := d.(types.BaseVirtualEthernetCard); ok {
			cards = append(cards, nic.GetVirtualEthernetCard())
		}
	}
	if len(spec.NicSettingMap) != len(cards) {
		return nil, customizationFault(&types.NicSettingMismatch{NumberOfNicsInSpec: int32(len(spec.NicSettingMap)), NumberOfNicsInVM: int32(len(cards))},
			"the specification has %d adapter settings, the VM %d network adapters", len(spec.NicSettingMap), len(cards))
	}
	// An entry naming a MAC address customizes that adapter; the others take
	// the remaining adapters in device order.
	assigned := make([]*types.VirtualEthernetCard, len(spec.NicSettingMap))
	used := map[int32]bool{}
	for i, setting := range spec.NicSettingMap {
		if setting.MacAddress == "" {
			continue
		}
		for _, c := range cards {
			if strings.EqualFold(c.MacAddress, setting.MacAddress) {
				assigned[i] = c
			}
		}
		property := fmt.Sprintf("spec.nicSettingMap[%d].macAddress", i)
		if assigned[i] == nil {
			return nil, invalidCustomization(property, "the VM has no network adapter with MAC address %s", setting.MacAddress)
		}
		if used[assigned[i].Key] {
			return nil, invalidCustomization(property, "network adapter %d is customized twice", assigned[i].Key)
		}
		used[assigned[i].Key] = true
	}
	next := 0
	for i := range assigned {
		for assigned[i] == nil {
			if !used[cards[next].Key] {
				assigned[i] = cards[next]
				used[cards[next].Key] = true
			}
			next++
		}
	}
	for i, setting := range spec.NicSettingMap {
		property := fmt.Sprintf("spec.nicSettingMap[%d]", i)
		card := assigned[i]
		adapter := setting.Adapter
		nic := &guestNIC{dnsDomain: adapter.DnsDomain}
		switch ip := adapter.Ip.(type) {
		case *types.CustomizationFixedIp:
			address, fault := checkIPv4(ip.IpAddress, property+".adapter.ip.ipAddress")
			if fault != nil {
				return nil, fault
			}
			mask, fault := checkIPv4(adapter.SubnetMask, property+".adapter.subnetMask")
			if fault != nil {
				return nil, fault
			}
			ones, bits := net.IPMask(mask).Size()
			if bits == 0 || ones == 0 {
				return nil, invalidCustomization(property+".adapter.subnetMask", "%q is not a subnet mask", adapter.SubnetMask)
			}
			network := &net.IPNet{IP: address.Mask(net.IPMask(mask)), Mask: net.IPMask(mask)}
			for _, gw := range adapter.Gateway {
				g, fault := checkIPv4(gw, property+".adapter.gateway")
				if fault != nil {
					return nil, fault
				}
				if !network.Contains(g) {
					return nil, invalidCustomization(property+".adapter.gateway", "gateway %s is not in %s", gw, network)
				}
			}
			nic.address, nic.prefix, nic.gateways = address.String(), int32(ones), adapter.Gateway
		case *types.CustomizationDhcpIpGenerator:
			nic.dhcp = true
		case nil:
			return nil, invalidCustomization(property+".adapter.ip", "an adapter needs a fixed IP or DHCP")
		default:
			return nil, customizationFault(&types.IpHostnameGeneratorError{}, "no IP address generator is configured for %T", ip)
		}
		if fault := checkIPv4List(adapter.DnsServerList, property+".adapter.dnsServerList"); fault != nil {
			return nil, fault
		}
		nic.dnsServers = adapter.DnsServerList
		id.nics[card.Key] = nic
	}
	for _, c := range cards {
		id.order = append(id.order, c.Key)
	}
	return id, nil
}

// customize is CustomizeVM_Task.
func (l *lab) customize(vm *simulator.VirtualMachine, spec types.CustomizationSpec) (types.AnyType, *methodFault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fault := vmGone(vm); fault != nil {
		return nil, fault
	}
	var fault *methodFault
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			fault = newFault(&types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOff, ExistingState: vm.Runtime.PowerState},
				"%s must be powered off to be customized", vm.Name)
			return
		}
		fault = l.setPendingCustomization(vm, &spec)
	})
	return nil, fault
}

// setPendingCustomization validates `spec` and leaves it for the VM's next
// power-on. The caller holds l.mu and the VM's lock.
func (l *lab) setPendingCustomization(vm *simulator.VirtualMachine, spec *types.CustomizationSpec) *methodFault {
	if l.pendingGuests[vm.Self.Value] != nil || (vm.Config.Tools != nil && vm.Config.Tools.PendingCustomization != "") {
		return customizationFault(&types.CustomizationPending{}, "a customization of %s is already pending: it runs at the next power-on", vm.Name)
	}
	id, fault := planCustomization(vm.Name, vm.Config.GuestId, vm.Config.Hardware.Device, spec)
	if fault != nil {
		return fault
	}
	ownVM(vm)
	if vm.Config.Tools == nil {
		vm.Config.Tools = &types.ToolsConfigInfo{}
	}
	l.pendingGuests[vm.Self.Value] = id
	vm.Config.Tools.PendingCustomization = fmt.Sprintf("[%s] imcf-%s", datastoreOf(vm.Config.Files.VmPathName), randomHex(8))
	l.configChanged(vm)
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "config.tools.pendingCustomization", Val: vm.Config.Tools.PendingCustomization},
		{Name: "config.changeVersion", Val: vm.Config.ChangeVersion},
	})
	return nil
}

// applyGuest runs a pending customization at power-on and makes the guest
// report its identity. The caller holds l.mu and the VM's lock, and the VM
// is powered on.
func (l *lab) applyGuest(vm *simulator.VirtualMachine) {
	// The customization is carried out inside the guest by VMware Tools (its
	// deployPkg plugin; vSphere's "Guest Operating System Customization
	// Requirements": VMware Tools must be installed): a guest whose Tools do
	// not run neither applies it nor reports any identity. It stays pending
	// until Tools start (setTools), as a failover must find out by waiting.
	if l.toolsState(vm) != toolsRunning {
		return
	}
	if pending := l.pendingGuests[vm.Self.Value]; pending != nil {
		delete(l.pendingGuests, vm.Self.Value)
		for _, key := range pending.order {
			if nic := pending.nics[key]; nic != nil && nic.dhcp {
				nic.address, nic.prefix = l.leaseDHCP(), dhcpPrefix
			}
		}
		l.guests[vm.Self.Value] = pending
		ownVM(vm)
		if vm.Config.Tools != nil {
			vm.Config.Tools.PendingCustomization = ""
		}
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.tools.pendingCustomization", Val: ""}})
	}
	id := l.guests[vm.Self.Value]
	if id == nil {
		return
	}
	ownVM(vm)
	if vm.Guest == nil {
		vm.Guest = &types.GuestInfo{}
	}
	macs := map[int32]string{}
	for _, d := range vm.Config.Hardware.Device {
		if nic, ok := d.(types.BaseVirtualEthernetCard); ok {
			macs[nic.GetVirtualEthernetCard().Key] = nic.GetVirtualEthernetCard().MacAddress
		}
	}
	byKey := map[int32]types.GuestNicInfo{}
	for _, n := range vm.Guest.Net {
		byKey[n.DeviceConfigId] = n
	}
	var nics []types.GuestNicInfo
	first := ""
	var gateway string
	for _, key := range id.order {
		n, ok := byKey[key]
		if !ok {
			n = types.GuestNicInfo{DeviceConfigId: key, MacAddress: macs[key], Connected: true}
		}
		c := id.nics[key]
		if c == nil || c.address == "" {
			nics = append(nics, n)
			continue
		}
		if first == "" {
			first = c.address
		}
		if gateway == "" && len(c.gateways) > 0 {
			gateway = c.gateways[0]
		}
		n.IpAddress = []string{c.address}
		origin := string(types.NetIpConfigInfoIpAddressOriginManual)
		if c.dhcp {
			origin = string(types.NetIpConfigInfoIpAddressOriginDhcp)
		}
		n.IpConfig = &types.NetIpConfigInfo{
			IpAddress: []types.NetIpConfigInfoIpAddress{{
				IpAddress: c.address, PrefixLength: c.prefix, Origin: origin,
				State: string(types.NetIpConfigInfoIpAddressStatusPreferred),
			}},
			Dhcp: &types.NetDhcpConfigInfo{Ipv4: &types.NetDhcpConfigInfoDhcpOptions{Enable: c.dhcp}},
		}
		servers := c.dnsServers
		if len(servers) == 0 {
			servers = id.dnsServers
		}
		domain := c.dnsDomain
		if domain == "" {
			domain = id.domain
		}
		n.DnsConfig = &types.NetDnsConfigInfo{Dhcp: c.dhcp, HostName: id.hostName, DomainName: domain, IpAddress: servers, SearchDomain: id.dnsSuffix}
		nics = append(nics, n)
	}
	vm.Guest.Net = nics
	vm.Guest.IpAddress = first
	vm.Guest.HostName = id.hostName
	stack := types.GuestStackInfo{
		DnsConfig: &types.NetDnsConfigInfo{HostName: id.hostName, DomainName: id.domain, IpAddress: id.dnsServers, SearchDomain: id.dnsSuffix},
	}
	if gateway != "" {
		stack.IpRouteConfig = &types.NetIpRouteConfigInfo{IpRoute: []types.NetIpRouteConfigInfoIpRoute{{
			Network: "0.0.0.0", PrefixLength: 0, Gateway: types.NetIpRouteConfigInfoGateway{IpAddress: gateway},
		}}}
	}
	vm.Guest.IpStack = []types.GuestStackInfo{stack}
	if vm.Summary.Guest == nil {
		vm.Summary.Guest = &types.VirtualMachineGuestSummary{}
	}
	vm.Summary.Guest.IpAddress, vm.Summary.Guest.HostName = first, id.hostName
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "guest.net", Val: guestNICs(vm)},
		{Name: "guest.ipAddress", Val: first},
		{Name: "guest.hostName", Val: id.hostName},
		{Name: "guest.ipStack", Val: vm.Guest.IpStack},
		{Name: "summary.guest.ipAddress", Val: first},
		{Name: "summary.guest.hostName", Val: id.hostName},
	})
}

// leaseDHCP hands out the next address of the lab's DHCP range. The caller holds l.mu.
func (l *lab) leaseDHCP() string {
	base := binary.BigEndian.Uint32(dhcpBase)
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, base+l.dhcpLeases)
	l.dhcpLeases++
	return ip.String()
}
