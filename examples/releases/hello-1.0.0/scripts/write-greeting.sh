#!/usr/bin/env bash
# hello 1.0.0, step "write greeting": write a file into the step's working directory
# (the agent runs every step in a fresh private directory) and show what was written.
set -euo pipefail

out="$PWD/greeting.txt"
{
    echo "${GREETING:-Hello}"
    echo "step:   ${TIANGONG_STEP_NAME:-?} (index ${TIANGONG_STEP_INDEX:-?})"
    echo "bundle: ${TIANGONG_BUNDLE_ID:-?}"
    echo "host:   $(uname -n)"
    echo "time:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$out"

echo "wrote $out ($(wc -c <"$out") bytes):"
cat "$out"
