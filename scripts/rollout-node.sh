#!/bin/sh
# rollout-node.sh COMMAND ARGS: runs on a twill node (the rollout test pipes
# it through ssh: ssh node sh -s -- COMMAND ARGS < rollout-node.sh) and does
# what a container runtime would, with the CNI plugin and conflist the
# Ansible role installed:
#   pod-add NAME         a network namespace with an interface from the CNI
#                        plugin; prints the pod's address
#   pod-del NAME         the CNI DEL and the namespace removed
#   ping POD ADDR...     one ping from POD to each ADDR; fails on the first loss
#   mtu POD ADDR SIZE    a ping of SIZE bytes with DF set
#   tcp-serve POD PORT   receive one TCP stream in POD (in the background),
#                        write its SHA-256 to /tmp/tcp-PORT.sum
#   tcp-send POD ADDR PORT MIB
#                        send MIB MiB of random bytes; prints their SHA-256
#   tcp-sum PORT         waits for and prints the receiver's SHA-256
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
mtu)
	ip netns exec "$1" ping -q -c 1 -W 3 -M do -s "$3" "$2" >/dev/null
	;;
tcp-serve)
	rm -f "/tmp/tcp-$2.sum.tmp"
	nohup ip netns exec "$1" python3 -c 'import hashlib,socket,sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(120)
c, _ = s.accept()
h = hashlib.sha256()
n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
open(sys.argv[2] + ".tmp", "w").write("%s %d\n" % (h.hexdigest(), n))
' "$2" "/tmp/tcp-$2.sum" >/tmp/tcp-$2.log 2>&1 &
	sleep 1
	;;
tcp-send)
	ip netns exec "$1" python3 -c 'import hashlib,os,socket,sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
h = hashlib.sha256()
n = int(sys.argv[3]) << 20
sent = 0
while sent < n:
    b = os.urandom(min(1 << 16, n - sent))
    c.sendall(b)
    h.update(b)
    sent += len(b)
c.close()
print(h.hexdigest(), sent)' "$2" "$3" "$4"
	;;
tcp-sum)
	i=0
	while [ ! -f "/tmp/tcp-$1.sum.tmp" ] && [ $i -lt 120 ]; do
		sleep 1
		i=$((i + 1))
	done
	cat "/tmp/tcp-$1.sum.tmp"
	;;
*)
	echo "rollout-node.sh: unknown command $cmd" >&2
	exit 2
	;;
esac
