#!/usr/bin/env bash
# make vagrant-test (opt-in): the Vagrantfile, for real, on this machine.
#  - a libvirt box built here from the rollout image (scripts/rollout-image.sh)
#    plus what Vagrant expects (user vagrant with the insecure key and
#    password-less sudo, DHCP on eth0); no box is downloaded;
#  - libvirtd and virtlogd started by this script inside a network
#    namespace and a mount namespace of its own (its sockets, images and
#    networks never show on the host);
#  - TWILL_NODES=3 vagrant up --provider libvirt (driver qemu: TCG), which
#    provisions with ansible/site.yml and runs ansible/pod-check.yml (a pod
#    on each node, pinging the others');
#  - the basic scenario (scenarios/basic-vxlan.yaml) through the vagrant
#    driver: twillctl scenario run --driver vagrant, pods made over SSH with
#    the CNI plugin the role installed, this namespace's end of the private
#    network as the host outside the cluster;
#  - vagrant destroy.
# Needs root. Prints the time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "${1:-}" != "--inside" ]; then
	[ "$(id -u)" -eq 0 ] || { echo "vagrant-test: needs root" >&2; exit 1; }
	for t in vagrant libvirtd virtlogd qemu-system-x86_64 dnsmasq ansible-playbook; do
		command -v "$t" >/dev/null || { echo "vagrant-test: $t is missing (make vagrant-test installs it)" >&2; exit 1; }
	done
	vagrant plugin list 2>/dev/null | grep -q vagrant-libvirt || { echo "vagrant-test: vagrant-libvirt is missing" >&2; exit 1; }
	[ -x bin/twilld ] || { echo "vagrant-test: run make build first" >&2; exit 1; }
	build=$repo/build/.vagrant-test
	mkdir -p "$build"
	img=$(scripts/rollout-image.sh "$repo/build/.rollout")
	ns=twt-vagrant-$$
	ip netns add "$ns"
	trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
	ip -n "$ns" link set lo up
	# ip netns exec gives a mount namespace too; unshare makes it private
	# so the mounts below stay in it.
	ip netns exec "$ns" unshare --mount --propagation private "$0" --inside "$img" "$build"
	exit
fi

img=$2
build=$3
t0=$(date +%s)
tstep=$t0
step() {
	local now
	now=$(date +%s)
	echo "== [$((now - t0)) s, previous step $((now - tstep)) s] $*"
	tstep=$now
}

step "box from $img"
box=$build/box-$(basename "$img")
if [ ! -f "$box/twill.box" ]; then
	rm -rf "$box"
	mkdir -p "$box/root"
	tar -C "$box/root" --numeric-owner -xf "$img/rootfs.tar"
	r=$box/root
	chroot "$r" useradd -m -s /bin/bash -G sudo vagrant
	echo "vagrant ALL=(ALL) NOPASSWD: ALL" >"$r/etc/sudoers.d/vagrant"
	chmod 440 "$r/etc/sudoers.d/vagrant"
	install -d -m 700 -o "$(chroot "$r" id -u vagrant)" -g "$(chroot "$r" id -g vagrant)" "$r/home/vagrant/.ssh"
	key=$({ find /usr/share/rubygems-integration /usr/lib/ruby /usr/share/vagrant -name vagrant.pub -path '*keys*' 2>/dev/null || true; } | head -1)
	[ -n "$key" ] || { echo "vagrant-test: Vagrant's insecure public key not found" >&2; exit 1; }
	install -m 600 -o "$(chroot "$r" id -u vagrant)" "$key" "$r/home/vagrant/.ssh/authorized_keys"
	printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' >"$r/etc/network/interfaces"
	truncate -s 4G "$box/disk.raw"
	mkfs.ext4 -q -F -L root -d "$r" "$box/disk.raw"
	qemu-img convert -O qcow2 "$box/disk.raw" "$box/box.img"
	rm -rf "$r" "$box/disk.raw"
	echo '{"provider":"libvirt","format":"qcow2","virtual_size":4}' >"$box/metadata.json"
	tar -C "$box" -cf "$box/twill.box.tmp" metadata.json box.img
	rm -f "$box/box.img"
	mv "$box/twill.box.tmp" "$box/twill.box"
fi

# libvirt's state lives under the build directory, seen at its usual
# places only in this mount namespace.
state=$build/state-$$
mkdir -p "$state"/{run,lib,log,etc,cache}
cp -a /etc/libvirt/. "$state/etc/"
# QEMU runs as root here: its files live in the build directory.
printf 'user = "root"\ngroup = "root"\n' >>"$state/etc/qemu.conf"
mount --bind "$state/run" /run/libvirt 2>/dev/null || { mkdir -p /run/libvirt; mount --bind "$state/run" /run/libvirt; }
mount --bind "$state/lib" /var/lib/libvirt
mount --bind "$state/log" /var/log/libvirt 2>/dev/null || { mkdir -p /var/log/libvirt; mount --bind "$state/log" /var/log/libvirt; }
mount --bind "$state/etc" /etc/libvirt
mount --bind "$state/cache" /var/cache/libvirt 2>/dev/null || true
mkdir -p /var/lib/libvirt/images /var/lib/libvirt/boot /var/lib/libvirt/qemu /var/lib/libvirt/dnsmasq
chmod 755 "$state" "$state/lib" "$state/lib/boot" 2>/dev/null || true
cp "$img/vmlinuz" "$img/initrd.img" /var/lib/libvirt/boot/
chmod 644 /var/lib/libvirt/boot/*
rm -f /etc/libvirt/qemu/networks/autostart/default.xml

pids=()
cleanup() {
	local rc=$?
	if [ -n "${VAGRANT_CWD:-}" ]; then
		step "vagrant destroy"
		(cd "$repo" && timeout 300 vagrant destroy -f) || rc=1
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[ $rc -eq 0 ] && rm -rf "$state"
	[ $rc -ne 0 ] && echo "vagrant-test: libvirt logs kept in $state/log" >&2
	exit $rc
}
trap cleanup EXIT

virtlogd &
pids+=($!)
libvirtd &
pids+=($!)
for _ in $(seq 1 30); do
	virsh -c qemu:///system version >/dev/null 2>&1 && break
	sleep 1
done
virsh -c qemu:///system version >/dev/null || { echo "vagrant-test: libvirtd did not start" >&2; exit 1; }
step "libvirtd up in its namespace"

export VAGRANT_HOME=$build/vagrant.d VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_DOTFILE_PATH=$build/dot-$$
export TWILL_NODES=${TWILL_NODES:-3} TWILL_BOX=twill-test TWILL_LIBVIRT_DRIVER=qemu TWILL_MEMORY=768
export TWILL_KERNEL=/var/lib/libvirt/boot/vmlinuz TWILL_INITRD=/var/lib/libvirt/boot/initrd.img
export ANSIBLE_NOCOLOR=1
vagrant box add --force --name twill-test "$box/twill.box" >/dev/null
export VAGRANT_CWD=$repo
step "vagrant up ($TWILL_NODES nodes, provisioned by ansible/site.yml, then ansible/pod-check.yml)"
# One VM at a time: the provisioner runs from the last VM and needs the
# others fully up (vagrant-libvirt brings machines up in parallel).
vagrant up --provider libvirt --no-parallel
step "vagrant status"
vagrant status
step "pod-to-pod check passed; the basic scenario through the vagrant driver"
"$repo/bin/twillctl" scenario run --driver vagrant --vagrant-dir "$repo" --report-dir "$build/reports-$$" \
	"$repo/scenarios/basic-vxlan.yaml"
step "scenario passed; destroying"
