#!/bin/sh
# pod.sh COMMAND ARGS: runs on a twill node (ansible/pod-check.yml runs it
# with ansible.builtin.script) and does what a container runtime would,
# with the CNI plugin and conflist the Ansible role installed:
#   pod-add NAME         a network namespace with an interface from the CNI
#                        plugin; prints the pod's address
#   pod-del NAME         the CNI DEL and the namespace removed
#   ping POD ADDR...     one ping from POD to each ADDR; fails on the first loss
set -eu
conflist=/etc/cni/net.d/10-twill.conflist

plugin_conf() {
	python3 -c 'import json,sys
c = json.load(open(sys.argv[1]))
p = c["plugins"][0]
p["name"] = c["name"]
p["cniVersion"] = c["cniVersion"]
print(json.dumps(p))' "$conflist"
}

cni() { # cni COMMAND NAME
	plugin_conf | CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=/run/netns/$2 CNI_IFNAME=eth0 \
		CNI_PATH=/opt/cni/bin /opt/cni/bin/"$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["plugins"][0]["type"])' "$conflist")"
}

cmd=$1
shift
case "$cmd" in
pod-add)
	ip netns add "$1"
	ip -n "$1" link set lo up
	cni ADD "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'
	;;
pod-del)
	cni DEL "$1" >/dev/null
	ip netns del "$1"
	;;
ping)
	pod=$1
	shift
	for a in "$@"; do
		ip netns exec "$pod" ping -q -c 1 -W 3 "$a" >/dev/null || {
			echo "$(hostname)/$pod -> $a: no answer" >&2
			exit 1
		}
	done
	;;
*)
	echo "pod.sh: unknown command $cmd" >&2
	exit 2
	;;
esac
