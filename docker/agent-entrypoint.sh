#!/bin/bash
# Entrypoint of the agent image: on the first start (no agent.toml in the home yet) run
# `tiangong agent init` once, then run `tiangong "$@"` (the image's CMD: `agent run ...`).
#
# Environment:
#   TIANGONG_AGENT_HOME         the home volume (set by the image)
#   TIANGONG_AGENT_ROOT         the hub's root.json (required on the first start; waited for
#                               up to TIANGONG_AGENT_ROOT_WAIT_S seconds, default 120, so a
#                               hub started alongside can publish it)
#   TIANGONG_AGENT_ID           agent id (default: hostname plus a key prefix)
#   TIANGONG_AGENT_ENVIRONMENT  the environment (site) the agent belongs to
#   TIANGONG_AGENT_HUB_URL      the hub's live endpoint (wss://hub:8401), if the site is online
#   TIANGONG_AGENT_EXCHANGE_DIR  a directory shared with the hub (a volume, a USB stick): the
#                               first start copies the enrollment request there, and with a
#                               hub URL every start waits until the hub's answer,
#                               enrollment-response-<id>.json, is there (up to
#                               TIANGONG_AGENT_ENROLL_WAIT_S seconds, default 3600) and
#                               imports it. An operator enrolls the agent at the hub:
#                               tiangong hub agents enroll DIR/enrollment-<id>.json \
#                                   --out DIR/enrollment-response-<id>.json
set -euo pipefail

# wait_for_file FILE SECONDS SETTING EXIT_CODE: poll until FILE is non-empty, or give up.
wait_for_file() {
    local deadline=$((SECONDS + $2))
    until [ -s "$1" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "agent-entrypoint: $1 did not appear within $2 s ($3)" >&2
            exit "$4"
        fi
        sleep 1
    done
}

home=${TIANGONG_AGENT_HOME:?the image sets TIANGONG_AGENT_HOME to the home volume}

if [ ! -e "$home/agent.toml" ]; then
    root=${TIANGONG_AGENT_ROOT:?the agent home $home is not initialised: set TIANGONG_AGENT_ROOT to the hub root.json}
    wait_for_file "$root" "${TIANGONG_AGENT_ROOT_WAIT_S:-120}" TIANGONG_AGENT_ROOT_WAIT_S 66
    init=(tiangong agent init "$home" --root "$root")
    [ -z "${TIANGONG_AGENT_ID:-}" ] || init+=(--id "$TIANGONG_AGENT_ID")
    [ -z "${TIANGONG_AGENT_ENVIRONMENT:-}" ] || init+=(--environment "$TIANGONG_AGENT_ENVIRONMENT")
    [ -z "${TIANGONG_AGENT_HUB_URL:-}" ] || init+=(--hub-url "$TIANGONG_AGENT_HUB_URL")
    echo "agent-entrypoint: first start: creating the agent home $home" >&2
    "${init[@]}" </dev/null >&2 || {
        echo "agent-entrypoint: tiangong agent init failed (see above); fix it and start again" >&2
        exit 1
    }
    if [ -n "${TIANGONG_AGENT_EXCHANGE_DIR:-}" ]; then
        cp "$home"/outbox/enrollment-*.json "$TIANGONG_AGENT_EXCHANGE_DIR/"
    fi
fi

if [ -n "${TIANGONG_AGENT_HUB_URL:-}" ] && [ -n "${TIANGONG_AGENT_EXCHANGE_DIR:-}" ] \
        && [ ! -e "$home/trust/hub-ca.pem" ]; then
    request=$(cd "$home/outbox" && ls enrollment-*.json 2>/dev/null | head -n 1) || true
    request=${request:-enrollment-${TIANGONG_AGENT_ID:-agent}.json}
    response="$TIANGONG_AGENT_EXCHANGE_DIR/enrollment-response-${request#enrollment-}"
    echo "agent-entrypoint: waiting for the hub's enrollment response $response; at the hub:" \
         "tiangong hub agents enroll $TIANGONG_AGENT_EXCHANGE_DIR/$request --out $response" >&2
    wait_for_file "$response" "${TIANGONG_AGENT_ENROLL_WAIT_S:-3600}" TIANGONG_AGENT_ENROLL_WAIT_S 75
    tiangong agent enroll-response "$response" --home "$home" </dev/null >&2
fi

exec tiangong "$@"
