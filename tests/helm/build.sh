#!/usr/bin/env bash
# Build the real `helm` (helm.sh/helm/v4, the version pinned in tests/helm/cli/go.mod) for the
# chart tests in tests/helm/, once per checkout.
#
#   tests/helm/build.sh          build unless the binary for these sources exists; print where
#   tests/helm/build.sh --path   print the binary's path if built, else say how to build; no build
#
# The binary goes to tests/helm/bin/KEY/helm (ignored by git), KEY being a hash of go.mod and
# go.sum, so a changed pin builds again and a second run builds nothing. Go keeps downloads in
# `go env GOMODCACHE` and compiled packages in `go env GOCACHE` (shared with `make kube`: both
# use the k8s.io modules at the same version, so after one the other compiles much less).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/cli"
key="$(cd "$src" && cat go.mod go.sum | sha256sum | cut -c1-16)"
out="$here/bin/$key"

if [[ "${1:-}" == "--path" ]]; then
    if [[ -x "$out/helm" ]]; then
        echo "$out/helm"
        exit 0
    fi
    echo "helm for these sources is not built ($out/helm is missing):" \
         "run 'make helm' (or 'make test', which builds it first)" >&2
    exit 3
fi

if [[ -x "$out/helm" ]]; then
    echo "helm: up to date in ${out#"$PWD"/}"
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "helm: 'go' is not on PATH; the Helm chart tests need Go (see docs/kubernetes-tests.md)" >&2
    exit 1
fi

version="$(sed -n 's/^[[:space:]]*helm\.sh\/helm\/v4 \(v[0-9.]*\)\( .*\)\{0,1\}$/\1/p' "$src/go.mod")"
[[ -n "$version" ]] || { echo "helm: no helm.sh/helm/v4 version in $src/go.mod" >&2; exit 1; }
export GOFLAGS="${GOFLAGS:-} -mod=mod"

start=$SECONDS
echo "helm: building helm $version into ${out#"$PWD"/} (first build: about 1-5 minutes)"
tmp="$here/bin/.tmp-$key-$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
cd "$src"
go mod download
echo "helm: [$((SECONDS - start))s] compiling (GOCACHE=$(go env GOCACHE))"
CGO_ENABLED=0 go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" \
    -o "$tmp/helm" helm.sh/helm/v4/cmd/helm
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Older builds are of no further use.
find "$here/bin" -mindepth 1 -maxdepth 1 -not -name "$key" -exec rm -rf {} +
echo "helm: [$((SECONDS - start))s] built $("$out/helm" version --short 2>/dev/null)"
