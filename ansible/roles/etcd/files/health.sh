#!/bin/sh
# health.sh ENDPOINT PKI-DIR TIMEOUT: waits until etcd at ENDPOINT reports
# itself healthy (etcdctl endpoint health with the member's certificate),
# for at most TIMEOUT seconds.
set -u
endpoint=$1 pki=$2 timeout=$3
end=$(($(date +%s) + timeout))
while :; do
	if out=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoint" --cacert="$pki/ca.crt" --cert="$pki/member.crt" \
		--key="$pki/member.key" --command-timeout=5s endpoint health 2>&1); then
		echo "$out"
		exit 0
	fi
	if [ "$(date +%s)" -ge "$end" ]; then
		echo "etcd at $endpoint is not healthy after ${timeout}s: $out" >&2
		exit 1
	fi
	sleep 2
done
