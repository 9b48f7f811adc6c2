#!/usr/bin/env bash
# make rollout-test: the Ansible roles against real VMs.
#
#  1. bad settings (an invalid CIDR, an unknown backend) stop site.yml before
#     any host is contacted, with a message naming the variable;
#  2. three QEMU VMs (TCG, never KVM) boot the Debian image of
#     scripts/rollout-image.sh (built once, cached under build/rollout), on a
#     bridge with tap devices inside a network namespace this test creates
#     (192.168.56.0/24; nothing is added to the host's own namespace);
#  3. ansible-playbook site.yml (inventories/qemu-lab) sets up a 3-member
#     etcd with TLS and twill on all three, over SSH with the image's key;
#  4. the basic scenario's checks across the VMs, with pods made by the CNI
#     plugin the role installed: every pod pings every pod on other nodes,
#     64 MiB over TCP arrive with the same SHA-256, the vxlan MTU holds;
#  5. a second run of site.yml must report changed=0 on every host;
#  6. a rebuilt twilld (another main.version) rolls out one node at a time:
#     every node runs it afterwards, is ready, keeps its subnet, and pods
#     still reach each other.
# Prints the time of each step. Needs root (namespaces, tap devices).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ "$(id -u)" -ne 0 ]; then
	echo "rollout-test: needs root (network namespace, tap devices, QEMU)" >&2
	exit 1
fi
for t in ansible-playbook qemu-system-x86_64 qemu-img ssh go; do
	command -v "$t" >/dev/null || { echo "rollout-test: $t is missing (make deps installs it)" >&2; exit 1; }
done

t0=$(date +%s)
tstep=$t0
step() {
	local now
	now=$(date +%s)
	echo "== [$((now - t0)) s, previous step $((now - tstep)) s] $*"
	tstep=$now
}
fail() {
	echo "rollout-test: FAIL: $*" >&2
	exit 1
}

build=$repo/build/.rollout # a dot: go ./... does not walk into it
mkdir -p "$build"
step "image"
img=$(scripts/rollout-image.sh "$build")
run=$(mktemp -d "$build/run-XXXXXX")
ns=twt-rollout-$$
pids=()
cleanup() {
	local rc=$?
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns del "$ns" 2>/dev/null || true
	if [ $rc -eq 0 ]; then
		rm -rf "$run"
	else
		echo "rollout-test: consoles and logs kept in $run" >&2
		for c in "$run"/node*.console; do echo "--- tail of $c" >&2; tail -15 "$c" >&2 || true; done
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

key=$run/id_ed25519
install -m 600 "$img/id_ed25519" "$key"
export ANSIBLE_CONFIG=$repo/ansible/ansible.cfg
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
playbook() { # playbook LOG ARGS...: site.yml against the lab, from inside the namespace
	local log=$1
	shift
	ip netns exec "$ns" ansible-playbook -i "$repo/ansible/inventories/qemu-lab" "$repo/ansible/site.yml" \
		--private-key "$key" -e "etcd_pki_dir=$run/pki" -e "twill_etcd_pki_dir=$run/pki" "$@" >"$log" 2>&1
}
sshn() { # sshn NODE-NUMBER COMMAND...
	ip netns exec "$ns" ssh -q -i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
		-o ConnectTimeout=5 -o BatchMode=yes "root@192.168.56.1$1" "${@:2}"
}
noden() { # noden NODE-NUMBER COMMAND ARGS: scripts/rollout-node.sh on a node
	sshn "$1" sh -s -- "${@:2}" <scripts/rollout-node.sh
}

step "binaries v1 and v2 (the rollout's new twilld)"
for v in 1 2; do
	CGO_ENABLED=0 go build -ldflags "-X main.version=rollout-v$v" -o "$run/bin-v$v/" ./cmd/twilld ./cmd/twillctl ./cmd/twill-cni
done

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add 192.168.56.1/24 dev br0
ip -n "$ns" link set br0 up

step "bad settings stop the playbook before any host is contacted"
for bad in "twill_network=10.244.0.1/16" "twill_backend=wireguard"; do
	var=${bad%%=*}
	if playbook "$run/bad.log" -e "$bad" -e "twill_binary_dir=$run/bin-v1"; then
		fail "site.yml accepted $bad"
	fi
	grep -q "$var" "$run/bad.log" || { cat "$run/bad.log"; fail "the message for $bad does not name $var"; }
	if grep -Eq 'UNREACHABLE|Set up etcd|Install etcd' "$run/bad.log"; then
		cat "$run/bad.log"
		fail "with $bad the playbook went on to the hosts"
	fi
	echo "refused $bad: $(grep -o "\"msg\": \"[^\"]*$var[^\"]*\"" "$run/bad.log" | head -1 | cut -c1-160)"
done

step "boot 3 VMs (QEMU TCG)"
for i in 1 2 3; do
	ip -n "$ns" tuntap add "tap$i" mode tap
	ip -n "$ns" link set "tap$i" master br0 up
	qemu-img create -q -f qcow2 -b "$img/disk.qcow2" -F qcow2 "$run/node$i.qcow2"
	ip netns exec "$ns" qemu-system-x86_64 -accel tcg -m 640 -smp 1 -display none -monitor none -no-reboot \
		-kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
		-append "console=ttyS0 root=/dev/vda rw quiet panic=-1 net.ifnames=0 lab.ip=192.168.56.1$i/24 lab.hostname=node$i" \
		-drive "file=$run/node$i.qcow2,if=virtio,format=qcow2" \
		-netdev "tap,id=n0,ifname=tap$i,script=no,downscript=no" \
		-device "virtio-net-pci,netdev=n0,mac=52:54:00:56:00:1$i,romfile=" \
		-serial "file:$run/node$i.console" &
	pids+=($!)
done
for i in 1 2 3; do
	for _ in $(seq 1 120); do
		sshn "$i" true 2>/dev/null && break
		kill -0 "${pids[$((i - 1))]}" 2>/dev/null || fail "the QEMU of node$i exited"
		sleep 2
	done
	sshn "$i" true || fail "no SSH on node$i"
done

step "site.yml: etcd with TLS and twill on 3 nodes"
playbook "$run/first.log" -e "twill_binary_dir=$run/bin-v1" || { cat "$run/first.log"; fail "site.yml failed"; }
grep -A4 'PLAY RECAP' "$run/first.log"

leases() { sshn 1 'set -a; . /etc/twill/twilld.env; twillctl leases -o json' |
	python3 -c 'import json,sys; print(" ".join(sorted("%s=%s" % (l["Attrs"]["PublicIP"], l["Subnet"]) for l in json.load(sys.stdin))))'; }
before=$(leases)
echo "leases: $before"
[ "$(wc -w <<<"$before")" -eq 3 ] || fail "want 3 leases, have: $before"

step "pods and the basic scenario's checks"
declare -A pod
for i in 1 2 3; do
	for p in 1 2; do
		pod[$i.$p]=$(noden "$i" pod-add "n${i}p$p")
		echo "node$i pod n${i}p$p: ${pod[$i.$p]}"
	done
done
pingall() {
	for i in 1 2 3; do
		for p in 1 2; do
			local targets=()
			for j in 1 2 3; do
				[ "$j" = "$i" ] && continue
				targets+=("${pod[$j.1]}" "${pod[$j.2]}")
			done
			noden "$i" ping "n${i}p$p" "${targets[@]}" || fail "pod n${i}p$p does not reach every pod on the other nodes"
		done
	done
	echo "every pod reaches every pod on the other nodes (24 pairs)"
}
pingall
noden 3 tcp-serve n3p2 7000
sent=$(noden 1 tcp-send n1p1 "${pod[3.2]}" 7000 64)
got=$(noden 3 tcp-sum 7000)
[ "$sent" = "$got" ] || fail "64 MiB n1p1 -> n3p2: sent $sent, received $got"
echo "64 MiB n1p1 -> n3p2 arrived intact: ${sent%% *}"
noden 1 mtu n1p1 "${pod[2.1]}" $((1450 - 28)) || fail "a 1450-byte packet (the vxlan MTU) does not pass n1p1 -> n2p1"
echo "a full-MTU (1450) packet passes n1p1 -> n2p1 with DF"

step "site.yml again: nothing may change"
playbook "$run/second.log" -e "twill_binary_dir=$run/bin-v1" || { cat "$run/second.log"; fail "second site.yml failed"; }
grep -A4 'PLAY RECAP' "$run/second.log"
if grep -E '^node[0-9].*changed=[1-9]' "$run/second.log"; then
	grep -E '^changed:' "$run/second.log" || true
	fail "the second run changed something"
fi

step "roll out twilld rollout-v2, one node at a time"
playbook "$run/upgrade.log" -e "twill_binary_dir=$run/bin-v2" || { cat "$run/upgrade.log"; fail "the upgrade failed"; }
grep -A4 'PLAY RECAP' "$run/upgrade.log"
# One node at a time: each node's restart is followed by its readiness check
# before the next node's install.
order=$(grep -E '^(TASK \[twill : Restart twilld\]|TASK \[twill : Check that this node holds)' -A1 "$run/upgrade.log" |
	grep -Eo '^(changed|ok): \[node[0-9]\]' | tr '\n' ' ')
echo "restart / ready order: $order"
[ "$order" = "changed: [node1] ok: [node1] changed: [node2] ok: [node2] changed: [node3] ok: [node3] " ] ||
	fail "the upgrade did not restart and check the nodes one at a time: $order"
for i in 1 2 3; do
	v=$(sshn "$i" /usr/local/bin/twilld --version)
	[ "$v" = "twilld rollout-v2" ] || fail "node$i runs $v after the upgrade"
	sshn "$i" systemctl is-active twilld >/dev/null || fail "twilld is not active on node$i"
done
after=$(leases)
echo "leases: $after"
[ "$before" = "$after" ] || fail "leases changed in the upgrade: before $before, after $after"
pingall

step "done: rollout test passed"
