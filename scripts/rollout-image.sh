#!/usr/bin/env bash
# rollout-image.sh DIR: builds (or reuses) the Debian image the rollout test
# and the Vagrant test boot: a debootstrap minbase root with systemd, sshd,
# python3 (for Ansible), Debian's etcd-server and a cloud kernel, as
#   DIR/<hash>/disk.qcow2     the root file system (ext4, no partition table)
#   DIR/<hash>/vmlinuz        the kernel of the image
#   DIR/<hash>/initrd.img     its initramfs (root=/dev/vda)
#   DIR/<hash>/id_ed25519     the SSH key root logs in with
#   DIR/<hash>/rootfs.tar     the root tree (the Vagrant box is made from it)
# <hash> is a hash of this script and the mirror, so a change to either
# builds a new image; an existing one is reused. Prints the image directory.
#
# The mirror is the one this machine's apt uses (never written here).
# The guest takes its address from the kernel command line:
#   lab.ip=192.168.56.11/24 lab.hostname=node1
set -euo pipefail
out=${1:?usage: rollout-image.sh DIR}
suite=bookworm
packages=systemd-sysv,openssh-server,python3,python3-apt,iproute2,iputils-ping,sudo,kmod,udev,ifupdown,isc-dhcp-client,linux-image-cloud-amd64,initramfs-tools,etcd-server,etcd-client,nftables

# mirror prints the Debian mirror of this machine's apt sources.
mirror() {
	local m=""
	if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
		m=$(awk -v s="$suite" '
			/^URIs:/ { u=$2 }
			/^Suites:/ { for (i=2;i<=NF;i++) if ($i==s) { print u; exit } }
			/^$/ { u="" }' /etc/apt/sources.list.d/*.sources)
	fi
	if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
		m=$(awk -v s="$suite" '$1=="deb" && $3==s { print $2; exit }' /etc/apt/sources.list)
	fi
	[ -n "$m" ] || { echo "rollout-image: no $suite mirror in the apt sources" >&2; exit 1; }
	echo "$m"
}

for t in debootstrap mkfs.ext4 qemu-img ssh-keygen; do
	command -v "$t" >/dev/null || { echo "rollout-image: $t is missing (make deps installs it)" >&2; exit 1; }
done
m=$(mirror)
hash=$( (cat "$0"; echo "$m $suite $packages") | sha256sum | cut -c1-16)
dir="$out/image-$hash"
if [ -f "$dir/.done" ]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [ -f "$dir/.done" ]; then
	echo "$dir"
	exit 0
fi
start=$(date +%s)
tmp=$(mktemp -d "$out/tmp-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
echo "rollout-image: debootstrap $suite (takes a minute or two)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$m" >"$tmp/debootstrap.log" 2>&1 || {
	tail -20 "$tmp/debootstrap.log" >&2
	exit 1
}

# Configuration of the guest.
echo "/dev/vda / ext4 defaults 0 1" >"$root/etc/fstab"
: >"$root/etc/machine-id" # each clone gets its own
rm -f "$root/var/lib/dbus/machine-id"
echo "twill" >"$root/etc/hostname"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
ssh-keygen -q -t ed25519 -N "" -C "twill-rollout" -f "$tmp/id_ed25519"
install -d -m 700 "$root/root/.ssh"
install -m 600 "$tmp/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
# Host keys are made at first boot, so clones do not share them.
rm -f "$root"/etc/ssh/ssh_host_*
install -d "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -f /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
EOF
# Only an ed25519 host key: an RSA key takes seconds to make under
# emulation.
printf 'UseDNS no\nHostKey /etc/ssh/ssh_host_ed25519_key\n' >"$root/etc/ssh/sshd_config.d/twill.conf"
# The address and name come from the kernel command line.
cat >"$root/usr/local/sbin/lab-net" <<'EOF'
#!/bin/sh
# Sets eth0's address and the host name from lab.ip= and lab.hostname= on
# the kernel command line (the rollout test's VMs); does nothing without them.
for w in $(cat /proc/cmdline); do
	case "$w" in
	lab.ip=*) ip=${w#lab.ip=} ;;
	lab.hostname=*) name=${w#lab.hostname=} ;;
	esac
done
[ -n "$name" ] && hostname "$name" && echo "$name" >/etc/hostname && printf '127.0.1.1 %s\n' "$name" >>/etc/hosts
if [ -n "$ip" ]; then
	# eth0 appears once udev has loaded its driver.
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	ip link set eth0 up && ip addr replace "$ip" dev eth0
fi
ip link set lo up
exit 0
EOF
chmod 755 "$root/usr/local/sbin/lab-net"
cat >"$root/etc/systemd/system/lab-net.service" <<'EOF'
[Unit]
Description=address and host name from the kernel command line
DefaultDependencies=no
Before=network-pre.target ssh.service
Wants=network-pre.target
After=systemd-udevd.service local-fs.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lab-net
RemainAfterExit=yes
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/lab-net.service "$root/etc/systemd/system/multi-user.target.wants/lab-net.service"
# etcd runs only once the playbook has configured it.
rm -f "$root/etc/systemd/system/multi-user.target.wants/etcd.service"
# Quieter, faster boots under emulation.
ln -sf /dev/null "$root/etc/systemd/system/systemd-timesyncd.service"
ln -sf /dev/null "$root/etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$root/etc/systemd/system/apt-daily-upgrade.timer"
ln -sf /dev/null "$root/etc/systemd/system/e2scrub_reap.service"
for u in getty-static.service systemd-binfmt.service e2scrub_all.timer fstrim.timer man-db.timer \
	dpkg-db-backup.timer proc-sys-fs-binfmt_misc.automount systemd-tmpfiles-clean.timer; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done
ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
# A small initramfs (only what mounts the root disk) unpacks faster.
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >>"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >"$tmp/initramfs.log" 2>&1 || {
	cat "$tmp/initramfs.log" >&2
	exit 1
}
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

kver=$(ls "$root/lib/modules" | head -1)
install -d "$tmp/out"
cp "$root/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$tmp/out/initrd.img"
chmod 644 "$tmp/out/vmlinuz" "$tmp/out/initrd.img"
echo "rollout-image: file system" >&2
tar -C "$root" -cf "$tmp/out/rootfs.tar" .
truncate -s 2G "$tmp/disk.raw"
mkfs.ext4 -q -F -L root -d "$root" "$tmp/disk.raw"
qemu-img convert -O qcow2 "$tmp/disk.raw" "$tmp/out/disk.qcow2"
mv "$tmp/id_ed25519" "$tmp/id_ed25519.pub" "$tmp/out/"
echo "$kver" >"$tmp/out/kernel-version"
touch "$tmp/out/.done"
rm -rf "$dir"
mv "$tmp/out" "$dir"
# Images of older versions of this script are of no further use.
for old in "$out"/image-*; do
	[ "$old" = "$dir" ] || rm -rf "$old"
done
echo "rollout-image: built $dir in $(($(date +%s) - start)) s" >&2
echo "$dir"
