#!/usr/bin/env bash
# Build the test control plane (tests/kube/apiserver: embedded etcd + kube-apiserver) and
# kubectl from the one module set pinned in tests/kube/apiserver/go.mod, once.
#
#   tests/kube/build.sh          build unless the binaries for these sources exist; print where
#   tests/kube/build.sh --path   print the binaries' folder if built, else say how to build; no build
#
# The binaries go to tests/kube/bin/KEY/ (ignored by git), KEY being a hash of go.mod, go.sum
# and the Go sources, so editing any of them builds again and a second run builds nothing.
# Go keeps its downloads in `go env GOMODCACHE` and its compiled packages in `go env GOCACHE`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/apiserver"
key="$(cd "$src" && cat go.mod go.sum $(ls ./*.go | sort) | sha256sum | cut -c1-16)"
out="$here/bin/$key"

if [[ "${1:-}" == "--path" ]]; then
    if [[ -x "$out/apiserver" && -x "$out/kubectl" ]]; then
        echo "$out"
        exit 0
    fi
    echo "the Kubernetes test binaries for these sources are not built ($out is missing):" \
         "run 'make kube' (or 'make test', which builds them first)" >&2
    exit 3
fi

if [[ -x "$out/apiserver" && -x "$out/kubectl" ]]; then
    echo "kube: apiserver and kubectl up to date in ${out#"$PWD"/}"
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "kube: 'go' is not on PATH; the Kubernetes tests need Go (see docs/kubernetes-tests.md)" >&2
    exit 1
fi

version="$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes v\([0-9.]*\)$/\1/p' "$src/go.mod")"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=${version%%.*}"
    minor="${version#*.}"
    ldflags+=" -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
done

start=$SECONDS
echo "kube: building kube-apiserver v$version + etcd test server and kubectl into ${out#"$PWD"/}"
echo "kube: the first build downloads ~0.6 GB of modules and compiles for 5-25 minutes;" \
     "later runs reuse the binaries"
tmp="$here/bin/.tmp-$key-$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
cd "$src"
echo "kube: downloading modules that are not cached yet (GOMODCACHE=$(go env GOMODCACHE))"
go mod download
echo "kube: [$((SECONDS - start))s] compiling apiserver (GOCACHE=$(go env GOCACHE))"
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/apiserver" .
echo "kube: [$((SECONDS - start))s] compiling kubectl"
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/kubectl" \
    k8s.io/kubernetes/cmd/kubectl
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Older builds are of no further use.
find "$here/bin" -mindepth 1 -maxdepth 1 -not -name "$key" -exec rm -rf {} +
echo "kube: [$((SECONDS - start))s] built $("$out/kubectl" version --client 2>/dev/null | head -1)"
