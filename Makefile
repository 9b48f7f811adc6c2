# twill's entry points. `make lab` brings up a lab cluster and shows it
# working; `make test` installs what the tests need and runs them all.

GO          ?= go
BIN         := bin
VERSION     := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The lab `make lab` brings up: its name, nodes, pods per node and backend
# (alloc when twilld does not know LAB_BACKEND yet).
LAB_NAME    ?= twill
LAB_NODES   ?= 3
LAB_PODS    ?= 2
LAB_BACKEND ?= vxlan
# Packages the tests and the lab need, by Debian name: the lab's and the
# browser test's, then
# the rollout test's (debootstrap image, QEMU, Ansible over SSH) and lint's
# (ansible-lint, vagrant for `vagrant validate`).
APT_PACKAGES := iproute2 nftables iputils-ping chromium \
	debootstrap qemu-system-x86 qemu-utils e2fsprogs openssh-client ansible-core \
	ansible-lint vagrant
# What make vagrant-test needs besides: libvirt and its Vagrant provider.
VAGRANT_TEST_PACKAGES := vagrant-libvirt libvirt-daemon-system qemu-system-x86 dnsmasq-base \
	libarchive-tools
# Nodes of make vagrant-up (the Vagrantfile reads TWILL_NODES).
TWILL_NODES ?= 3

.PHONY: all build deps lab lab-down test unit lint bench clean rollout-test vagrant-up vagrant-down vagrant-test

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# deps installs what is missing on a fresh Debian machine (as root); it
# does nothing when everything is there.
deps:
	@scripts/deps.sh $(APT_PACKAGES)

# lab brings up a lab cluster (see scripts/lab.sh) and leaves it running;
# lab-down removes it.
lab: deps build
	LAB_NAME=$(LAB_NAME) LAB_NODES=$(LAB_NODES) LAB_PODS=$(LAB_PODS) LAB_BACKEND=$(LAB_BACKEND) scripts/lab.sh

lab-down: build
	$(BIN)/twillctl lab down --name $(LAB_NAME)

test: deps lint unit rollout-test

# rollout-test: the Ansible roles on 3 QEMU VMs (see scripts/rollout-test.sh);
# about 10 minutes on 2 cores, the first time a few more for the image.
rollout-test: deps
	scripts/rollout-test.sh

# vagrant-up brings up the Vagrant lab (TWILL_NODES nodes, provisioned by
# ansible/site.yml); vagrant-down destroys it. Needs Vagrant with the
# libvirt or VirtualBox provider on your machine.
vagrant-up: build
	TWILL_NODES=$(TWILL_NODES) vagrant up --no-parallel

vagrant-down:
	TWILL_NODES=$(TWILL_NODES) vagrant destroy -f

# vagrant-test (opt-in, not part of test): Vagrant with libvirt started
# inside a namespace of the test's own, 2 nodes from a locally built box.
vagrant-test: deps build
	@scripts/deps.sh $(VAGRANT_TEST_PACKAGES)
	scripts/vagrant-test.sh

unit:
	$(GO) test -count=1 -timeout 20m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd ansible && ANSIBLE_CONFIG=ansible.cfg ansible-lint --nocolor --profile production site.yml pod-check.yml
	VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

clean:
	rm -rf $(BIN)
