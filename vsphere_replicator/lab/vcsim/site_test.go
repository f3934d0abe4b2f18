package main

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/vmware/govmomi/vim25/types"
)

func TestTheDefaultSiteKeepsTheLabsNamesAndAnotherSiteHasItsOwn(t *testing.T) {
	def := namesFor("")
	if def.datacenter != "DC0" || def.primaryDS != primaryDatastore || def.vmNetwork != vmNetworkName || (&config{}).vmName(7) != "lab-vm-0007" {
		t.Fatalf("default site: %+v", def)
	}
	b := namesFor("B")
	want := siteNames{"DC-B", "primary-ds-b", "secondary-ds-b", "VM Network B", "DR Network B", "lab-b-vm-"}
	if b != want {
		t.Fatalf("site B: %+v, want %+v", b, want)
	}
	if got := (&config{site: "B"}).vmName(12); got != "lab-b-vm-0012" {
		t.Fatalf("site B's VM 12 is %q", got)
	}
	for _, bad := range []string{"-B", "a b", "x/y", "12345678901234567"} {
		if validSite.MatchString(bad) {
			t.Errorf("%q accepted as a site name", bad)
		}
	}
	c := config{stateDir: "/tmp/x", listen: "127.0.0.1:0", vms: 0, disksPerVM: 1, diskSize: 1 << 20, hosts: 1, cbtBlock: 512, cbtWindow: 512, site: "a b"}
	if err := validate(&c); err == nil {
		t.Fatal("validate accepted the site name \"a b\"")
	}
}

func TestEveryLabDrawsItsOwnInstanceUUID(t *testing.T) {
	form := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for i := 0; i < 50; i++ {
		u := newInstanceUUID()
		if !form.MatchString(u) || seen[u] {
			t.Fatalf("instance UUID %q (seen before: %v)", u, seen[u])
		}
		seen[u] = true
	}
}

func testNIC(key int32, mac string) types.BaseVirtualDevice {
	nic := newNIC(types.ManagedObjectReference{Type: "Network", Value: "network-7"}, vmNetworkName)
	nic.Key, nic.MacAddress = key, mac
	return nic
}

func linuxSpec(host string, nics ...types.CustomizationAdapterMapping) *types.CustomizationSpec {
	return &types.CustomizationSpec{
		Identity:      &types.CustomizationLinuxPrep{HostName: &types.CustomizationFixedName{Name: host}, Domain: "dr.example"},
		NicSettingMap: nics,
	}
}

func fixedIP(address, mask string, gateways ...string) types.CustomizationAdapterMapping {
	return types.CustomizationAdapterMapping{Adapter: types.CustomizationIPSettings{
		Ip: &types.CustomizationFixedIp{IpAddress: address}, SubnetMask: mask, Gateway: gateways,
	}}
}

func TestACustomizationPlanFollowsTheAdaptersAndRefusesWhatVSphereRefuses(t *testing.T) {
	devices := []types.BaseVirtualDevice{testNIC(4000, "00:50:56:00:00:0a"), testNIC(4001, "00:50:56:00:00:0b")}
	second := fixedIP("10.1.2.3", "255.255.0.0", "10.1.0.1")
	second.MacAddress = "00:50:56:00:00:0a" // the first adapter, named by its MAC
	dhcp := types.CustomizationAdapterMapping{Adapter: types.CustomizationIPSettings{Ip: &types.CustomizationDhcpIpGenerator{}}}
	plan, fault := planCustomization("vm", "otherLinux64Guest", devices, linuxSpec("host1", dhcp, second))
	if fault != nil {
		t.Fatalf("plan: %v", fault.msg)
	}
	if n := plan.nics[4000]; n == nil || n.address != "10.1.2.3" || n.prefix != 16 || n.dhcp {
		t.Fatalf("adapter 4000: %+v", plan.nics[4000])
	}
	if n := plan.nics[4001]; n == nil || !n.dhcp {
		t.Fatalf("adapter 4001: %+v", plan.nics[4001])
	}
	cases := map[string]struct {
		guest string
		spec  *types.CustomizationSpec
		fault types.BaseMethodFault
	}{
		"count":   {"otherLinux64Guest", linuxSpec("h", dhcp), &types.NicSettingMismatch{}},
		"windows": {"windows9Server64Guest", linuxSpec("h", dhcp, dhcp), &types.UncustomizableGuest{}},
		"mask":    {"otherLinux64Guest", linuxSpec("h", fixedIP("10.1.2.3", "255.0.255.0"), dhcp), &types.InvalidArgument{}},
		"gateway": {"otherLinux64Guest", linuxSpec("h", fixedIP("10.1.2.3", "255.255.255.0", "10.9.0.1"), dhcp), &types.InvalidArgument{}},
		"name":    {"otherLinux64Guest", linuxSpec("-h", dhcp, dhcp), &types.InvalidArgument{}},
		"generator": {"otherLinux64Guest", &types.CustomizationSpec{
			Identity:      &types.CustomizationLinuxPrep{HostName: &types.CustomizationUnknownName{}, Domain: "d"},
			NicSettingMap: []types.CustomizationAdapterMapping{dhcp, dhcp},
		}, &types.IpHostnameGeneratorError{}},
	}
	for name, c := range cases {
		_, fault := planCustomization("vm", c.guest, devices, c.spec)
		if fault == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if got, want := fmt.Sprintf("%T", fault.fault), fmt.Sprintf("%T", c.fault); got != want {
			t.Errorf("%s: %s, want %s (%s)", name, got, want, fault.msg)
		}
	}
}
