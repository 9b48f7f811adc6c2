#!/usr/bin/env bash
# The control-plane lab: one embedded etcd and three twilld nodes on
# loopback addresses (127.0.0.11-13) with the alloc backend. Each node leases
# a subnet and writes its subnet file; the script prints the leases, stops
# the nodes, starts them again to show that each keeps its subnet, and
# cleans up. The network-namespace lab with pods replaces this as the lab
# work lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin
dir=$(mktemp -d /tmp/twill-lab.XXXXXX)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

port=$(( 20000 + RANDOM % 20000 ))
url="http://127.0.0.1:$port"
"$bin/twillctl" etcd --data-dir "$dir/etcd" --listen-client-urls "$url" >"$dir/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "etcd ready" "$dir/etcd.log" 2>/dev/null && break; sleep 0.1; done
grep -q "etcd ready" "$dir/etcd.log" || { cat "$dir/etcd.log"; exit 1; }
echo "== etcd at $url"

cat >"$dir/net.json" <<'JSON'
{"Network": "10.244.0.0/16", "Backend": {"Type": "alloc"}}
JSON
"$bin/twillctl" config put --etcd-endpoints "$url" "$dir/net.json"

start_nodes() {
	node_pids=()
	for i in 1 2 3; do
		mkdir -p "$dir/n$i"
		"$bin/twilld" --etcd-endpoints "$url" --public-ip "127.0.0.1$i" --node-name "node$i" \
			--subnet-file "$dir/n$i/subnet.env" >"$dir/n$i/twilld.log" 2>&1 &
		node_pids+=($!)
		pids+=($!)
	done
	for i in 1 2 3; do
		for _ in $(seq 100); do grep -q "msg=ready" "$dir/n$i/twilld.log" && break; sleep 0.1; done
		grep -q "msg=ready" "$dir/n$i/twilld.log" || { cat "$dir/n$i/twilld.log"; exit 1; }
	done
}

start_nodes
echo "== three nodes up; their subnet files:"
for i in 1 2 3; do echo "-- node$i"; cat "$dir/n$i/subnet.env"; done
echo "== leases in etcd:"
"$bin/twillctl" leases --etcd-endpoints "$url"
before=$(cat "$dir"/n*/subnet.env | grep TWILL_SUBNET)

echo "== stopping the nodes (SIGTERM) and starting them again"
kill -TERM "${node_pids[@]}"
wait "${node_pids[@]}" 2>/dev/null || true
rm -f "$dir"/n*/subnet.env
start_nodes
after=$(cat "$dir"/n*/subnet.env | grep TWILL_SUBNET)
"$bin/twillctl" leases --etcd-endpoints "$url"
if [ "$before" = "$after" ]; then
	echo "== OK: every node got its subnet back after the restart"
else
	echo "== FAIL: subnets changed across the restart"; echo "$before"; echo "$after"; exit 1
fi
