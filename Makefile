# twill's entry points. `make lab` brings up a lab cluster and shows it
# working; `make test` installs what the tests need and runs them all.

GO          ?= go
BIN         := bin
VERSION     := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The lab `make lab` brings up: its name, nodes, pods per node and backend.
LAB_NAME    ?= twill
LAB_NODES   ?= 3
LAB_PODS    ?= 2
LAB_BACKEND ?= vxlan
# Packages the lab needs, by Debian name; then what the tests, the benchmark
# and lint (ansible-lint, vagrant for `vagrant validate`) need besides
# (bird2 and frr: the routers the bgp backend is tested against; gcc and
# iptables: make flannel builds flanneld with cgo, and flanneld clears
# iptables rules at start even in nftables mode).
LAB_APT_PACKAGES := iproute2 nftables iputils-ping
APT_PACKAGES := $(LAB_APT_PACKAGES) gcc iptables chromium iperf3 ansible-lint vagrant bird2 frr
# Packages the qemu tier (make vmtest, twillctl lab up --driver qemu) needs:
# the emulator and what the VM image is built from. The kernel itself is
# fetched with apt-get download (its version is pinned in vmtest/image_linux.go).
VM_APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static cpio kmod e2fsprogs iperf3 binutils
# Where the VM kernel and initramfs are cached.
TWILL_VM_DIR ?= $(CURDIR)/build/vm
# Where make kube puts kube-apiserver and kube-controller-manager (the
# tests find them there, or in $TWILL_KUBE_DIR).
TWILL_KUBE_DIR ?= $(CURDIR)/build/kube
# make image: the image's name, and where its OCI layout and tarball go.
IMAGE     ?= twill:latest
IMAGE_DIR ?= $(CURDIR)/build/image

# make bench: rounds and length of each iperf3 run, and where the JSON goes.
BENCH_ROUNDS   ?= 3
BENCH_DURATION ?= 5s
BENCH_JSON     ?= bench.json

# What make rollout-test needs besides: the debootstrap image, QEMU, Ansible
# over SSH.
ROLLOUT_APT_PACKAGES := debootstrap qemu-system-x86 qemu-utils e2fsprogs openssh-client ansible-core
# What make vagrant-test needs besides: libvirt and its Vagrant provider.
VAGRANT_TEST_PACKAGES := vagrant-libvirt libvirt-daemon-system qemu-system-x86 dnsmasq-base \
	libarchive-tools
# Nodes of make vagrant-up (the Vagrantfile reads TWILL_NODES).
TWILL_NODES ?= 3

.PHONY: all build image flannel deps lab-deps lab lab-down test unit kube vmtest lint bench bench-go clean rollout-test vagrant-up vagrant-down vagrant-test

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# image writes the container image of twilld, twillctl and twill-cni
# (deploy/kubernetes/twill.yaml runs it) without a container daemon:
# an OCI layout in $(IMAGE_DIR)/oci and a tarball $(IMAGE_DIR)/twill.tar
# for docker load, podman load or ctr images import (tools/image).
image: build
	$(GO) run ./tools/image --bin $(BIN) --out $(IMAGE_DIR) --tag $(IMAGE) --version $(VERSION)

# deps installs what is missing on a fresh Debian machine (as root); it
# does nothing when everything is there.
deps:
	@scripts/deps.sh $(APT_PACKAGES) $(VM_APT_PACKAGES)

# lab-deps installs only what the lab needs.
lab-deps:
	@scripts/deps.sh $(LAB_APT_PACKAGES)

# lab brings up a lab cluster (see scripts/lab.sh) and leaves it running;
# lab-down removes it.
lab: lab-deps build
	@LAB_NAME=$(LAB_NAME) LAB_NODES=$(LAB_NODES) LAB_PODS=$(LAB_PODS) LAB_BACKEND=$(LAB_BACKEND) scripts/lab.sh

lab-down: build
	$(BIN)/twillctl lab down --lab $(LAB_NAME)

test: deps lint unit vmtest rollout-test

# flannel builds flannel's own flanneld (FLANNEL_VERSION, from the Go module
# proxy, cgo for its udp backend) and the reference bridge and host-local
# CNI plugins into build/flannel, for the scenarios that put a real flannel
# node next to twill nodes (flannel-mixed-*; they skip without it). The
# module is tools/flannel: rebuilt only when its go.mod or go.sum change.
# flannel's tencent-vpc backend is built against a stand-in of its cloud
# SDK (tools/flannel/absent), which the proxy does not serve.
FLANNEL_VERSION := v0.28.10
flannel: build/flannel/flanneld

build/flannel/flanneld: tools/flannel/go.mod tools/flannel/go.sum
	cd tools/flannel && CGO_ENABLED=1 $(GO) build -trimpath \
		-ldflags '-X github.com/flannel-io/flannel/pkg/version.Version=$(FLANNEL_VERSION)' \
		-o $(CURDIR)/build/flannel/flanneld github.com/flannel-io/flannel
	cd tools/flannel && CGO_ENABLED=0 $(GO) build -trimpath -o $(CURDIR)/build/flannel/ \
		github.com/containernetworking/plugins/plugins/main/bridge \
		github.com/containernetworking/plugins/plugins/ipam/host-local
	touch $@

# rollout-test: the Ansible roles on 3 QEMU VMs booted by the qemu driver
# from a Debian system image (TestRollout in scenarios/: bad settings
# refused, site.yml, the basic scenario on the VMs, a second run with
# changed=0, a new twilld rolled out node by node). Part of test; the image
# is built once and cached in build/.rollout.
rollout-test: deps
	@scripts/deps.sh $(ROLLOUT_APT_PACKAGES)
	TWILL_ROLLOUT=1 $(GO) test -count=1 -timeout 30m -v -run '^TestRollout$$' ./scenarios

# vagrant-up brings up the Vagrant lab (TWILL_NODES nodes, provisioned by
# ansible/site.yml); vagrant-down destroys it. Needs Vagrant with the
# libvirt or VirtualBox provider on your machine.
vagrant-up: build
	TWILL_NODES=$(TWILL_NODES) vagrant up --no-parallel

vagrant-down:
	TWILL_NODES=$(TWILL_NODES) vagrant destroy -f

# vagrant-test (opt-in, not part of test): Vagrant with libvirt started
# inside a namespace of the test's own, 3 nodes from a locally built box,
# the pod-to-pod check, then the basic scenario through the vagrant driver
# (twillctl scenario run --driver vagrant).
vagrant-test: deps build
	@scripts/deps.sh $(VAGRANT_TEST_PACKAGES)
	scripts/vagrant-test.sh

unit: kube flannel
	TWILL_KUBE_DIR=$(TWILL_KUBE_DIR) $(GO) test -count=1 -timeout 20m ./...

# kube builds the real kube-apiserver (and kube-controller-manager) that
# the Kubernetes tests run, from the official k8s.io/kubernetes module
# (tools/kube, a module of its own), into $(TWILL_KUBE_DIR); only when they
# are missing or tools/kube has changed. Tests without them skip, naming
# this target.
kube:
	@scripts/kube-build.sh $(TWILL_KUBE_DIR)

# vmtest is the qemu tier: a 1-VM check of the driver, then 3-VM clusters
# playing 18 scenarios: basic-udp, basic-udp-userspace, basic-vxlan, basic-ipip, vm-faults, underlay-ipvlan-l2, underlay-ipvlan-l3, restart-under-traffic, basic-wireguard, wireguard-mixed, restart-under-traffic-wireguard, dual-stack-vxlan, bgp-ipip-crosssubnet, bgp-ipip-always, bgp-gateway-reboot, dual-stack-wireguard, kube-vxlan, flannel-mixed-wireguard, each timed.
# Software emulation unless TWILL_VM_ACCEL=kvm or auto. It fails (never
# skips) when QEMU or the kernel cannot be had. flannel-mixed-wireguard
# runs make flannel's flanneld in a VM.
vmtest: deps flannel
	TWILL_QEMU=1 TWILL_VM_DIR=$(TWILL_VM_DIR) $(GO) test -count=1 -p 1 -timeout 40m -v -run '^(TestQEMUNode|TestScenariosQEMU)$$' ./vmtest ./scenarios

# lint also builds and vets for darwin, so that the CLI builds on a Mac
# (labs are Linux's; the vagrant driver and twillctl's API commands are not).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=darwin $(GO) build ./...
	GOOS=darwin $(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd ansible && ANSIBLE_CONFIG=ansible.cfg ansible-lint --nocolor --profile production site.yml pod-check.yml
	VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider

# bench measures every pod-to-pod path in one run (twillctl bench: labs in
# network namespaces, iperf3, ping) and prints a table with medians and
# ratios to kernel vxlan; it takes about ten minutes, so it is not part of
# test (a one-round smoke test of the harness is, in bench/).
bench: deps build
	$(BIN)/twillctl bench -v --rounds $(BENCH_ROUNDS) --duration $(BENCH_DURATION) --json $(BENCH_JSON)

# bench-go runs the Go benchmarks (in-process, figures per package), one
# package at a time so that they do not share the cores. Every benchmark
# iterates with b.Loop, so each runs once, its setup (a lab, an etcd, a
# kube-apiserver) done once; -benchtime 1s gives the fast ones many
# iterations and the scale ones (1000 Kubernetes Nodes: seconds a round)
# one.
bench-go: kube
	TWILL_KUBE_DIR=$(TWILL_KUBE_DIR) $(GO) test -p 1 -run '^$$' -bench . -benchtime 1s -timeout 30m ./...

clean:
	rm -rf $(BIN)
