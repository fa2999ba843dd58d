#!/usr/bin/env bash
# billing 2.4.0, step "smoke test": the API answers, runs the expected version, and
# computes an invoice total. Usage: smoke-test.sh --expect-version VERSION
#
# The API token is the site's secret "billing-api-token"; the agent passes it in the
# environment as TIANGONG_SECRET_BILLING_API_TOKEN. It is handed to curl on stdin (-H @-),
# never on a command line, where other users could read it in the process list.
set -euo pipefail

expect_version=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --expect-version) expect_version="${2:?--expect-version needs a value}"; shift 2 ;;
        *) echo "smoke-test: unknown argument: $1" >&2; exit 2 ;;
    esac
done

: "${BILLING_URL:?BILLING_URL is not set (it comes from env in release.toml)}"
: "${TIANGONG_SECRET_BILLING_API_TOKEN:?the secret billing-api-token was not provided}"

api() {
    printf 'Authorization: Bearer %s\n' "$TIANGONG_SECRET_BILLING_API_TOKEN" |
        curl --silent --show-error --fail --max-time 10 --header @- "$@"
}

echo "checking $BILLING_URL/healthz"
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if api "$BILLING_URL/healthz" >/dev/null; then
        break
    fi
    if [ "$attempt" -eq 10 ]; then
        echo "smoke-test: billing API not healthy after $attempt attempts" >&2
        exit 1
    fi
    echo "not ready yet (attempt $attempt); retrying in 5 s"
    sleep 5
done

version=$(api "$BILLING_URL/version")
echo "billing API reports version $version"
if [ -n "$expect_version" ] && [ "$version" != "$expect_version" ]; then
    echo "smoke-test: expected version $expect_version, got $version" >&2
    exit 1
fi

total=$(api --header 'Content-Type: application/json' \
    --data '{"lines": [{"quantity": 2, "unit_price": "10.00", "tax_rate": "0.19"}]}' \
    "$BILLING_URL/v1/invoices/preview-total")
echo "preview total: $total"
if [ "$total" != "23.80" ]; then
    echo "smoke-test: expected a preview total of 23.80, got $total" >&2
    exit 1
fi
echo "smoke test passed"
