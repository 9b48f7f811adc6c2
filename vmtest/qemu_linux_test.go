package vmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
)

// TestQEMUNode boots a 1-VM lab and checks what only a VM has: its own
// kernel with the modules twill needs, the agent channel with exit codes
// and stdin, twilld's subnet file copied out, a reboot that keeps the
// subnet, and a console log kept after Down. Opt in with TWILL_QEMU=1.
func TestQEMUNode(t *testing.T) {
	if os.Getenv("TWILL_QEMU") != "1" {
		t.Skip("boots a VM: run it with make vmtest, or TWILL_QEMU=1")
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root: makes a namespace with a bridge and a tap device")
	}
	if err := CheckVMTools(); err != nil {
		t.Fatal(err)
	}
	bin := binaries.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	name := "qn" + strings.TrimLeft(time.Now().Format("0405"), "0")
	c, err := Up(ctx, Spec{Name: name, Driver: "qemu", Nodes: 1, Backend: "ipip", PodsPerNode: 1, Bin: bin}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := Down(context.Background(), name); err != nil {
			t.Error(err)
		}
	})
	out, err := c.Exec(ctx, "n1", "uname", "-r")
	if err != nil || strings.TrimSpace(string(out)) != KernelVersion {
		t.Errorf("uname -r in the VM = %q, %v; want %s", out, err, KernelVersion)
	}
	out, err = c.Exec(ctx, "n1", "/sbin/ip", "-d", "link", "show", "twill.ipip")
	if err != nil || !strings.Contains(string(out), "ipip") {
		t.Errorf("the VM has no ipip device: %v: %s", err, out)
	}
	_, err = c.Exec(ctx, "n1", "sh", "-c", "exit 3")
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("exit 3 in the VM gave %v", err)
	}
	node, err := c.Node("n1")
	if err != nil || !node.Subnet.IsValid() || !node.Running {
		t.Fatalf("node %+v, %v: want a subnet and twilld running", node, err)
	}
	pod := c.Pods()[0]
	if !node.Subnet.Contains(pod.Addr) {
		t.Errorf("pod %s is not in the node's subnet %s", pod.Addr, node.Subnet)
	}
	if out, err := c.Exec(ctx, pod.Name, "ping", "-c", "1", "-W", "2", node.Subnet.Addr().Next().String()); err != nil {
		t.Errorf("the pod cannot reach its gateway: %v: %s", err, out)
	}
	if err := c.RebootNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	after, err := c.Node("n1")
	if err != nil || after.Subnet != node.Subnet || !after.Running {
		t.Errorf("after the reboot: %+v, %v; want %s and twilld running", after, err, node.Subnet)
	}
	if out, _ := c.Exec(ctx, "n1", "cat", "/proc/sys/kernel/random/boot_id"); strings.TrimSpace(string(out)) == "" {
		t.Error("no boot ID after the reboot")
	}
	if err := c.SetUnderlayLoss(ctx, "n1", 5, 10*time.Millisecond); err != nil {
		t.Error(err)
	}
	if out, err := c.Exec(ctx, "n1", "/sbin/tc", "qdisc", "show", "dev", "eth0"); err != nil || !strings.Contains(string(out), "loss 5%") {
		t.Errorf("no netem on eth0: %v: %s", err, out)
	}
	console := node.LogPath
	c.Close()
	if err := Down(ctx, name); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(console)
	if err != nil || strings.Count(string(b), "twill-vm: booted") != 2 {
		t.Errorf("console log %s after Down: %v; want two boots in it:\n%s", console, err, b)
	}
}

// TestNetnsDriverRefusesVMFaults checks that the netns driver says it
// cannot do what only a VM can, instead of skipping it.
func TestNetnsDriverRefusesVMFaults(t *testing.T) {
	c, err := newLab("x", &state{Spec: Spec{Name: "x", Driver: "netns"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RebootNode(context.Background(), "n1"); !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "netns driver") {
		t.Errorf("RebootNode on netns = %v", err)
	}
	if err := c.SetUnderlayLoss(context.Background(), "n1", 1, 0); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("SetUnderlayLoss on netns = %v", err)
	}
}

// TestDriverChoice checks that a lab's driver is chosen from its spec
// alone, so that a lab opened from its state file gets the driver that
// made it.
func TestDriverChoice(t *testing.T) {
	for _, tt := range []struct {
		spec Spec
		want string
	}{
		{Spec{Driver: "netns"}, "*vmtest.netnsDriver"},
		{Spec{Driver: "qemu"}, "*vmtest.qemuDriver"},
		{Spec{Driver: "qemu", SystemImage: "/img"}, "*vmtest.systemDriver"},
	} {
		tt.spec.Name = "x"
		l, err := newLab("x", &state{Spec: tt.spec}, nil)
		if err != nil {
			t.Errorf("%+v: %v", tt.spec, err)
			continue
		}
		if got := fmt.Sprintf("%T", l.drv); got != tt.want {
			t.Errorf("%+v: driver %s, want %s", tt.spec, got, tt.want)
		}
	}
	if _, err := newLab("x", &state{Spec: Spec{Name: "x", Driver: "vbox"}}, nil); err == nil {
		t.Error("a lab with driver vbox was made")
	}
	// A system image lab is bare: twill's daemons are Ansible's.
	l, _ := newLab("x", &state{Spec: Spec{Name: "x", Driver: "qemu", SystemImage: "/img"}}, nil)
	if err := l.StartDaemon(context.Background(), "n1"); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("StartDaemon on a system image lab = %v", err)
	}
}
