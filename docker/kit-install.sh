#!/usr/bin/env bash
# Install Tiangong from this offline kit, without any package index.
#   ./install.sh agent /opt/tiangong       the site agent
#   ./install.sh hub   /opt/tiangong       the hub (web UI, live server, CLI)
# Checks the kit's SHA-256 sums first; creates a virtual environment at the prefix with the
# python3 on PATH (or $PYTHON), which must match the kit's (see KIT-INFO.txt).
set -euo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
what=${1:-}
prefix=${2:-}
case "$what" in agent|hub) ;; *) echo "usage: $0 agent|hub PREFIX" >&2; exit 2 ;; esac
[ -n "$prefix" ] || { echo "usage: $0 agent|hub PREFIX" >&2; exit 2; }
python=${PYTHON:-python3}

(cd "$kit" && sha256sum --quiet -c SHA256SUMS) || {
  echo "install.sh: $kit/SHA256SUMS does not match the kit's files: the copy is damaged" >&2
  exit 1
}
"$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --no-index --find-links "$kit/wheels" \
    --disable-pip-version-check "tiangong[$what]"
echo "installed tiangong[$what] into $prefix: $("$prefix/bin/tiangong" --version)"
