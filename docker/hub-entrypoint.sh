#!/bin/bash
# Entrypoint of the hub image: on the first start (no hub.toml in the data directory yet) run
# `tiangong hub init` once; on every start copy root.json to $TIANGONG_HUB_PUBLISH_DIR if set
# (where agents read it), then run `tiangong "$@"` (the image's CMD: `hub serve ...`).
#
# Environment (all optional except the passphrase):
#   TIANGONG_HUB_DATA_DIR          the data volume (set by the image)
#   TIANGONG_ROOT_PASSPHRASE_FILE  first line: passphrase of the root key (a secret file), or
#   TIANGONG_KEY_PASSPHRASE        the passphrase itself
#   TIANGONG_HUB_ADMIN             first admin (default: admin)
#   TIANGONG_HUB_ADMIN_PASSWORD_FILE  first line: the first admin's web password; sets the web
#                                  UI's sign-in to local passwords (default: none, the CLI
#                                  only; for SAML add [saml] to hub.toml, docs/web-login.md)
#   TIANGONG_HUB_ENVIRONMENT       first environment (site) to create
#   TIANGONG_HUB_DATABASE_URL      postgresql://... (default: SQLite on the volume)
#   TIANGONG_HUB_TLS_NAMES         names agents use to reach the live server (space-separated)
#   TIANGONG_HUB_ROOT_KEY_OUT      where init writes the root key (default: on the volume,
#                                  root-key.OFFLINE.json: move it offline, see docs/install.md)
#   TIANGONG_HUB_PUBLISH_DIR       a directory shared with agents: root.json is copied there
set -euo pipefail

data=${TIANGONG_HUB_DATA_DIR:?the image sets TIANGONG_HUB_DATA_DIR to the data volume}

if [ ! -e "$data/hub.toml" ]; then
    init=(tiangong hub init --data-dir "$data" --admin "${TIANGONG_HUB_ADMIN:-admin}")
    password=/dev/null
    if [ -n "${TIANGONG_HUB_ADMIN_PASSWORD_FILE:-}" ]; then
        init+=(--sign-in local --admin-password-stdin)
        password=$TIANGONG_HUB_ADMIN_PASSWORD_FILE
    else
        init+=(--sign-in none)
    fi
    if [ -n "${TIANGONG_ROOT_PASSPHRASE_FILE:-}" ]; then
        init+=(--passphrase-file "$TIANGONG_ROOT_PASSPHRASE_FILE")
    elif [ -z "${TIANGONG_KEY_PASSPHRASE:-}" ]; then
        echo "hub-entrypoint: $data is not initialised and no passphrase for the root key is" \
             "given: set TIANGONG_ROOT_PASSPHRASE_FILE (a secret file) or TIANGONG_KEY_PASSPHRASE" >&2
        exit 64
    fi
    [ -z "${TIANGONG_HUB_ENVIRONMENT:-}" ] || init+=(--environment "$TIANGONG_HUB_ENVIRONMENT")
    [ -z "${TIANGONG_HUB_DATABASE_URL:-}" ] || init+=(--database-url "$TIANGONG_HUB_DATABASE_URL")
    [ -z "${TIANGONG_HUB_ROOT_KEY_OUT:-}" ] || init+=(--root-key-out "$TIANGONG_HUB_ROOT_KEY_OUT")
    for name in ${TIANGONG_HUB_TLS_NAMES:-}; do
        init+=(--tls-name "$name")
    done
    echo "hub-entrypoint: first start: initialising $data" >&2
    "${init[@]}" <"$password" >&2 || {
        echo "hub-entrypoint: tiangong hub init failed (see above); fix it and start again" >&2
        exit 1
    }
fi

if [ -n "${TIANGONG_HUB_PUBLISH_DIR:-}" ]; then
    cp "$data/root.json" "$TIANGONG_HUB_PUBLISH_DIR/.root.json.tmp"
    mv "$TIANGONG_HUB_PUBLISH_DIR/.root.json.tmp" "$TIANGONG_HUB_PUBLISH_DIR/root.json"
fi

exec tiangong "$@"
