#!/usr/bin/env bash
# Build the offline install kit: one directory with the wheels of tiangong[agent] and
# tiangong[hub] and every dependency, an install script, SHA-256 checksums, the docs and the
# container/systemd files. See docs/install.md.
#
#   docker/offline-kit.sh OUT_DIR            (what `make offline-kit` runs)
#
# The wheels are for the Python and platform that run this script (`python3 -c 'import sys;
# print(sys.version)'`, `uname -m`, glibc). For another target, run it there, or pass pip's
# target options through PIP_KIT_TARGET, e.g.
#   PIP_KIT_TARGET="--python-version 3.12 --platform manylinux2014_aarch64 --only-binary=:all:"
# (then the kit is downloaded, not built: every dependency must publish a wheel for it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
out=${1:?usage: docker/offline-kit.sh OUT_DIR}
python=${PYTHON:-python3}

mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/wheels.new"
mkdir -p "$out/wheels.new"

# The project's own wheel, built from a clean copy of the checkout's files (tracked, or new and
# not ignored: nothing stale from build/ or *.egg-info ends up in it); pip fetches the build
# backend, setuptools, like any other dependency.
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
"$python" - "$src" "$tree" <<'COPY'
import shutil, subprocess, sys
from pathlib import Path
src, tree = Path(sys.argv[1]), Path(sys.argv[2])
listed = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others",
                         "--exclude-standard"], capture_output=True, check=True).stdout
for name in filter(None, listed.decode().split("\0")):
    path = src / name
    if path.is_file():  # tracked files deleted in the work tree are left out
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, tree / name)
COPY
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out/wheels.new" "$tree"
project_wheel=$(ls "$out/wheels.new"/tiangong-*.whl)

# Every dependency of both extras, as wheels (pip's cache makes a second run cheap).
# shellcheck disable=SC2086  # PIP_KIT_TARGET is a list of options on purpose
if [ -n "${PIP_KIT_TARGET:-}" ]; then
  "$python" -m pip download --quiet ${PIP_KIT_TARGET} --dest "$out/wheels.new" \
      "${project_wheel}[agent,hub]"
else
  "$python" -m pip wheel --quiet --wheel-dir "$out/wheels.new" "${project_wheel}[agent,hub]"
fi
rm -rf "$out/wheels"
mv "$out/wheels.new" "$out/wheels"

# The docs and the files to run it: container images, compose, systemd units, Helm chart.
rm -rf "$out/docs" "$out/docker"
mkdir -p "$out/docs" "$out/docker"
cp "$src/README.md" "$out/docs/"
cp "$src"/docs/*.md "$out/docs/"
for f in Dockerfile.hub Dockerfile.agent compose.yaml hub-entrypoint.sh agent-entrypoint.sh \
         tiangong-hub.service tiangong-hub-live.service tiangong-agent.service; do
  cp "$src/docker/$f" "$out/docker/"
done
cp -R "$src/docker/helm" "$out/docker/helm"   # the hub's Helm chart and example values
cp "$here/kit-install.sh" "$out/install.sh"
chmod 0755 "$out/install.sh" "$out/docker/hub-entrypoint.sh" "$out/docker/agent-entrypoint.sh"

"$python" - "$out" <<'PY' > "$out/KIT-INFO.txt"
import platform, sys
print(f"tiangong offline kit built {__import__('datetime').datetime.now(__import__('datetime').timezone.utc):%Y-%m-%dT%H:%M:%SZ}")
print(f"python {platform.python_version()} ({sys.implementation.name}), {platform.system()} {platform.machine()}, libc {' '.join(platform.libc_ver())}")
PY

# Checksums last, over everything else in the kit (verify with `sha256sum -c SHA256SUMS`).
(cd "$out" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort \
   | xargs -d '\n' sha256sum > SHA256SUMS)
echo "offline kit: $out ($(ls "$out/wheels" | wc -l) wheels; check with: cd $out && sha256sum -c SHA256SUMS)"
