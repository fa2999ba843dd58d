#!/usr/bin/env bash
# make demo: a hub on SQLite and a site agent on this machine; a sample release is approved by
# someone other than its author, promoted through the channels RELEASE → CANARY → STABLE (the
# site's environment subscribes to STABLE), exported to a "USB stick" directory, dropped into
# the agent's inbox, verified and run; the signed result travels back and is imported into the audit log.
# A tampered copy of the bundle is refused along the way.
set -euo pipefail
cd "$(dirname "$0")/.."
T="$PWD/.venv/bin/tiangong"
OUT="$PWD/demo-out"
RELEASE="$PWD/examples/releases/hello-1.0.0"
PORT="${TIANGONG_DEMO_PORT:-8400}"
export TIANGONG_HUB_DATA_DIR="$OUT/hub"
export TIANGONG_KEY_PASSPHRASE="demo-only-passphrase"   # protects the demo root key

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
hub() { local user=$1; shift; "$T" hub --local-admin "$user" "$@"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

rm -rf "$OUT"; mkdir -p "$OUT/usb-to-site" "$OUT/usb-to-hub"
cd "$OUT"

say "1. A hub on SQLite: database, keys, root of trust, first admin"
hub admin init --admin admin --hub-id demo-hub
"$T" hub serve --bind "127.0.0.1:$PORT" --workers 1 > hub.log 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.2
done
echo "hub serving on http://127.0.0.1:$PORT  (health: $(curl -fsS "http://127.0.0.1:$PORT/healthz" || echo down))"

say "2. People and a site"
for pair in alice:developer bob:approver carol:operator audrey:auditor; do
  hub admin users create "${pair%%:*}" >/dev/null
  hub admin users grant "${pair%%:*}" "${pair##*:}"
done
hub admin users grant alice approver   # even an approver may not approve her own release
hub admin environments create plant-a >/dev/null
echo "alice writes releases, bob approves, carol ships, audrey audits"

say "3. A site agent pinned to the hub's root, enrolled with its request file"
"$T" agent init agent --root hub/root.json --id plant-a-01 --environment plant-a
sed -i 's/settle_seconds = 5.0/settle_seconds = 1.0/; s/rescan_seconds = 10.0/rescan_seconds = 2.0/' agent/agent.toml
cp agent/outbox/enrollment-*.json usb-to-hub/
hub carol import usb-to-hub
rm -f usb-to-hub/*

say "4. alice uploads $(basename "$RELEASE") and submits it; alice may not approve her own release"
hub alice releases create "$RELEASE" --create-product >/dev/null
hub alice releases submit hello 1.0.0 >/dev/null
hub alice releases approve hello 1.0.0 || echo "   (refused, as it must be)"
hub admin environments subscribe plant-a --product hello --channel STABLE
hub admin channels rule hello STABLE --approvals 1 >/dev/null
echo "plant-a follows channel STABLE of hello; promoting into STABLE needs one approver"
hub bob releases approve hello 1.0.0 --comment "looks good" >/dev/null
echo "bob approved it: hello 1.0.0 entered the first channel"
hub carol channels list hello

say "4b. carol promotes it RELEASE → CANARY → STABLE; reaching STABLE queues plant-a's deployment"
hub carol releases promote hello 1.0.0
hub carol releases promote hello 1.0.0 || echo "   (refused: STABLE's rule wants an approver of the promotion)"
hub bob releases approve-promotion hello 1.0.0 --comment "canary looked fine"
hub carol releases promote hello 1.0.0

say "5. carol exports the bundle to the USB stick"
hub carol export --environment plant-a --out usb-to-site
cat usb-to-site/INDEX-plant-a.txt

say "6. At the site: the agent runs, the stick's bundle (and a tampered copy) are dropped in"
"$T" agent run --home agent > agent.log 2>&1 &
pids+=($!)
bundle=$(ls usb-to-site/*.tgb)
cp "$bundle" usb-to-site/tampered.tgb.copy
python3 - usb-to-site/tampered.tgb.copy <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[-1500] ^= 0x01          # one bit, inside a compressed payload
open(p, "wb").write(bytes(b))
PY
name=$(basename "$bundle")
cp "$bundle" "agent/inbox/$name.part"                # copied under a temp name ...
mv "agent/inbox/$name.part" "agent/inbox/$name"      # ... renamed when complete
mv usb-to-site/tampered.tgb.copy agent/inbox/tampered.tgb
for _ in $(seq 1 240); do
  [ "$(find agent/outbox -name '*.tgr' | wc -l)" -ge 2 ] && break; sleep 0.25
done
"$T" agent status --home agent
echo
echo "quarantine reason for the tampered copy:"
sed 's/^/   /' agent/quarantine/tampered.tgb.reason.txt

say "7. The results go back on the stick and carol imports them"
cp agent/outbox/*.tgr usb-to-hub/
hub carol import usb-to-hub             # the agent's rejection report is imported too
hub carol deployments list

say "8. audrey verifies the audit log, online and from an offline export"
hub audrey audit verify
hub audrey audit export --out audit-export.jsonl >/dev/null
"$T" audit verify-export audit-export.jsonl --trust hub/root.json

say "Where to look"
cat <<TXT
  demo-out/hub/                    the hub: hub.db (SQLite), root.json, keys/, results/
  demo-out/hub/root-key.OFFLINE.json   the root key: in real life it leaves the machine
  demo-out/usb-to-site/            what carol carried to the site (bundle + INDEX)
  demo-out/agent/archive/          bundles the agent accepted and ran
  demo-out/agent/quarantine/       refused files, each with a .reason.txt
  demo-out/agent/outbox/           signed results; demo-out/agent/logs/ the step logs
  demo-out/audit-export.jsonl      the audit log, verifiable offline with root.json
  demo-out/hub.log, agent.log      the processes' own logs
  hub health: http://127.0.0.1:$PORT/healthz (stopped when the demo ends)

  To click through the same flow in a browser: make demo-ui (leaves a hub running on
  127.0.0.1 and prints the URL and the sample users' passwords).
TXT
