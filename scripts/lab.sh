#!/usr/bin/env bash
# make lab: brings up a lab of LAB_NODES nodes (network namespaces, each
# with a real twilld) and LAB_PODS pods per node, with the LAB_BACKEND
# backend, prints where everything is, and leaves the lab running. An
# existing lab of the same name is replaced, so running it again is fine.
# `make lab-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${LAB_NAME:-twill}
nodes=${LAB_NODES:-3}
pods=${LAB_PODS:-2}
backend=${LAB_BACKEND:-vxlan}

up() {
	bin/twillctl lab up --name "$name" --nodes "$nodes" --pods-per-node "$pods" --backend "$1" 2>&1
}
if ! out=$(up "$backend"); then
	if grep -q "is not available in this twilld" <<<"$out"; then
		echo "== twilld has no $backend backend yet; using alloc (pods reach only pods on their own node)"
		out=$(up alloc) || { echo "$out"; exit 1; }
	else
		echo "$out"
		exit 1
	fi
fi
echo "$out"
echo
echo "== the lab stays up. Try:"
echo "   ip netns exec $name-n1-p1 ping -c1 ADDRESS-OF-p2   # pods on one node"
echo "   bin/twillctl leases --etcd-endpoints unix:///run/twill-lab/$name/etcd.sock"
echo "   bin/twillctl pod add --lab $name n1 web     # another pod"
echo "   make lab-down                              # remove the lab"
