#!/usr/bin/env bash
# make demo-ui: a hub on SQLite with sample people who sign in to the web UI with a password,
# left running on 127.0.0.1 so the four-eyes flow can be tried in a browser: alice has
# uploaded and submitted a release, bob approves it, carol queues and exports it, audrey
# reads the audit log, admin manages people. Prints the URL, the people and their passwords.
#
# Settings (environment): TIANGONG_DEMO_UI_PORT (8410), TIANGONG_DEMO_UI_OUT (demo-ui-out),
# TIANGONG_BIN (the tiangong command; default .venv/bin/tiangong).
set -euo pipefail
cd "$(dirname "$0")/.."
T="${TIANGONG_BIN:-$PWD/.venv/bin/tiangong}"
OUT="${TIANGONG_DEMO_UI_OUT:-$PWD/demo-ui-out}"
PORT="${TIANGONG_DEMO_UI_PORT:-8410}"
RELEASE="$PWD/examples/releases/hello-1.0.0"
URL="http://127.0.0.1:$PORT"
export TIANGONG_HUB_DATA_DIR="$OUT/hub"
export TIANGONG_KEY_PASSPHRASE="demo-only-passphrase"   # protects the demo root key

hub() { local user=$1; shift; "$T" hub --local-admin "$user" "$@"; }

if [ -f "$OUT/hub.pid" ] && kill -0 "$(cat "$OUT/hub.pid")" 2>/dev/null; then
  echo "stopping the demo hub left running before (process $(cat "$OUT/hub.pid"))"
  kill "$(cat "$OUT/hub.pid")"
  for _ in $(seq 1 50); do kill -0 "$(cat "$OUT/hub.pid")" 2>/dev/null || break; sleep 0.2; done
fi
rm -rf "$OUT"; mkdir -p "$OUT"

# Password sign-in for the hub's own users ([web] local_login = true; plain http is fine on
# 127.0.0.1 only: the hub refuses local_login when it listens beyond loopback).
echo "admin-demo-password" | hub admin init --admin admin --hub-id demo-ui-hub \
  --environment plant-a --sign-in local --admin-password-stdin >/dev/null

for pair in alice:developer bob:approver carol:operator audrey:auditor; do
  hub admin users add "${pair%%:*}" --role "${pair##*:}" >/dev/null
done
hub admin users grant alice approver >/dev/null   # she still may not approve her own release
for who in alice bob carol audrey; do
  echo "$who-demo-password" | hub admin users set-password "$who" --password-stdin >/dev/null
done
hub alice releases create "$RELEASE" --create-product >/dev/null
hub alice releases submit hello 1.0.0 >/dev/null

# The hub keeps running after this script: its own session, output in hub.log.
setsid "$T" hub serve --bind "127.0.0.1:$PORT" --workers 2 > "$OUT/hub.log" 2>&1 < /dev/null &
echo $! > "$OUT/hub.pid"
for _ in $(seq 1 150); do
  curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$OUT/hub.pid")" 2>/dev/null || { cat "$OUT/hub.log"; exit 1; }
  sleep 0.2
done
curl -fsS "$URL/healthz" >/dev/null

cat <<TEXT

The Tiangong web UI is running: $URL
Sign in at $URL/login with one of these (user name / password):

  alice   alice-demo-password    developer (and approver): submitted release hello 1.0.0
  bob     bob-demo-password      approver: approve hello 1.0.0 (alice may not: four eyes)
  carol   carol-demo-password    operator: queue it for plant-a, export the media
  audrey  audrey-demo-password   auditor: the audit log, verify and export it
  admin   admin-demo-password    admin: people, roles, sign someone out everywhere

Use a private window per person (each keeps its own session).
Log: $OUT/hub.log   Stop it: kill \$(cat $OUT/hub.pid)
TEXT
