package vmtest

import (
	"strings"
	"testing"
)

// vagrantSSHConfig is what `vagrant ssh-config` printed for a 3-node lab
// of the project's Vagrantfile with the libvirt provider.
const vagrantSSHConfig = `Host node1
  HostName 192.168.121.31
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/u/twill/.vagrant/machines/node1/libvirt/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host node3
  HostName 192.168.121.33
  User vagrant
  Port 22
  IdentityFile "/home/u/my twill/.vagrant/machines/node3/libvirt/private_key"

Host node2
  HostName=192.168.121.32
  User vagrant
  Port 2200
  Port 2201
`

func TestParseSSHConfig(t *testing.T) {
	hosts, err := ParseSSHConfig(vagrantSSHConfig)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 3 {
		t.Fatalf("%d hosts, want 3: %+v", len(hosts), hosts)
	}
	for _, tt := range []struct{ host, key, want string }{
		{"node1", "hostname", "192.168.121.31"},
		{"node1", "identityfile", "/home/u/twill/.vagrant/machines/node1/libvirt/private_key"},
		{"node1", "hostkeyalgorithms", "+ssh-rsa"},
		{"node3", "identityfile", "/home/u/my twill/.vagrant/machines/node3/libvirt/private_key"},
		{"node2", "hostname", "192.168.121.32"}, // Key=Value
		{"node2", "port", "2200"},               // the first value wins
	} {
		var got string
		for _, h := range hosts {
			if h.Name == tt.host {
				got = h.Options[tt.key]
			}
		}
		if got != tt.want {
			t.Errorf("%s %s = %q, want %q", tt.host, tt.key, got, tt.want)
		}
	}
}

func TestParseSSHConfigRefuses(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "no Host"},
		{"User vagrant\nHost node1\n", "before the first Host"},
		{"Host node*\n  User vagrant\n", "want one plain name"},
		{"Host node1\n  User\n", "has no value"},
		{"Match host node1\n", "Match blocks"},
	} {
		_, err := ParseSSHConfig(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseSSHConfig(%q) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

func TestVagrantNodes(t *testing.T) {
	hosts, err := ParseSSHConfig(vagrantSSHConfig + "Host default\n  User vagrant\n")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := vagrantNodes(hosts)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range nodes {
		got = append(got, n.Name+"="+n.Host)
	}
	if want := "n1=node1 n2=node2 n3=node3"; strings.Join(got, " ") != want {
		t.Errorf("nodes %v, want %s", got, want)
	}
	for _, tt := range []struct{ in, want string }{
		{"Host node1\n  User v\nHost node3\n  User v\n", "node2 is not running"},
		{"Host web\n  User v\n", "no machine named node<N> among web"},
	} {
		h, err := ParseSSHConfig(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := vagrantNodes(h); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("vagrantNodes(%q) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}
