#!/usr/bin/env bash
# Builds the official kube-apiserver and kube-controller-manager from the
# module in tools/kube (k8s.io/kubernetes, its version pinned there) into
# the directory given (build/kube), for the tests. Cached: it builds only
# when a binary is missing or tools/kube's go.mod, go.sum or sources have
# changed since (their digest is kept in DIR/.source).
set -euo pipefail
dir=${1:?usage: kube-build.sh DIR}
src=$(cd "$(dirname "$0")/../tools/kube" && pwd)
digest=$(cd "$src" && cat go.mod go.sum $(find . -name '*.go' | sort) | sha256sum | cut -d' ' -f1)
bins=(kube-apiserver kube-controller-manager)
current=1
for b in "${bins[@]}"; do [ -x "$dir/$b" ] || current=0; done
if [ "$current" = 1 ] && [ "$(cat "$dir/.source" 2>/dev/null)" = "$digest" ]; then
	exit 0
fi
version=$(cd "$src" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
echo "kube: building ${bins[*]} $version into $dir (a few minutes the first time)"
mkdir -p "$dir"
rm -f "$dir/.source"
start=$(date +%s)
v=k8s.io/component-base/version
(cd "$src" && CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X $v.gitVersion=$version -X $v.gitMajor=$major -X $v.gitMinor=$minor" \
	-o "$dir/" $(printf './%s ' "${bins[@]}"))
echo "$digest" >"$dir/.source"
echo "kube: built in $(($(date +%s) - start)) s"
