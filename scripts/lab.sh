#!/usr/bin/env bash
# make lab: brings up a lab of LAB_NODES nodes (network namespaces, each
# with a real twilld) and LAB_PODS pods per node, with the LAB_BACKEND
# backend, plays the basic scenario of that backend against it, prints where
# everything is, and leaves the lab running. An existing lab of the same
# name is replaced, so running it again is fine. `make lab-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${LAB_NAME:-twill}
nodes=${LAB_NODES:-3}
pods=${LAB_PODS:-2}
backend=${LAB_BACKEND:-vxlan}

bin/twillctl lab up --lab "$name" --nodes "$nodes" --pods-per-node "$pods" --backend "$backend" --ip-masq --outside --status=false

scenario="scenarios/basic-$backend.yaml"
if [ -f "$scenario" ] && [ "$nodes" -ge 3 ] && [ "$pods" -ge 2 ]; then
	echo
	echo "== playing $scenario against the lab"
	bin/twillctl scenario run --attach --lab "$name" "$scenario"
fi

echo
bin/twillctl lab status --lab "$name"
echo
echo "== the lab stays up. Try:"
echo "   ip netns exec $name-n1-n1p1 ping -c1 <address of n3p2>   # pod to pod across nodes"
echo "   bin/twillctl leases --etcd-endpoints unix:///run/twill-lab/$name/etcd.sock"
echo "   bin/twillctl pod add --lab $name n1 web                    # another pod"
echo "   bin/twillctl scenario run scenarios/node-leaves.yaml       # a scenario on a cluster of its own"
echo "   make lab-down                                              # remove the lab"
