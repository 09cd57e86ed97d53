#!/bin/sh
# One-shot setup of the Temporal cluster for ncpi-followup, run by the `temporal-setup` service
# (image temporalio/admin-tools, Temporal CLI 1.x). Idempotent: safe on every `docker compose up`.
#   1. waits for the frontend,
#   2. registers the namespace if missing (retention NAMESPACE_RETENTION),
#   3. registers each custom search attribute of SEARCH_ATTRIBUTES ("Name=Type ...") if missing,
#      and waits until the namespace lists all of them, so a worker started afterwards can use them.
# The list must match ncpi_workflow/temporal.py SEARCH_ATTRIBUTES (tests/test_compose.py checks it).
set -eu

: "${TEMPORAL_ADDRESS:=temporal:7233}"
: "${NAMESPACE:=default}"
: "${NAMESPACE_RETENTION:=720h}"
: "${SEARCH_ATTRIBUTES:?SEARCH_ATTRIBUTES must list Name=Type pairs}"

tcli() { temporal "$@" --address "$TEMPORAL_ADDRESS"; }

# retry ATTEMPTS COMMAND...: run COMMAND until it succeeds, 2 s apart.
retry() {
    attempts=$1; shift; n=1
    until "$@"; do
        if [ "$n" -ge "$attempts" ]; then
            echo "temporal-setup: gave up after $attempts attempts: $*" >&2
            return 1
        fi
        n=$((n + 1)); sleep 2
    done
}

has_attribute() { tcli operator search-attribute list --namespace "$NAMESPACE" | grep -qw "$1"; }

echo "temporal-setup: waiting for Temporal at $TEMPORAL_ADDRESS"
retry 90 tcli operator cluster health >/dev/null

if tcli operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
    echo "temporal-setup: namespace $NAMESPACE already registered"
else
    echo "temporal-setup: registering namespace $NAMESPACE (retention $NAMESPACE_RETENTION)"
    tcli operator namespace create --namespace "$NAMESPACE" --retention "$NAMESPACE_RETENTION" \
        --description "ncpi-followup: inspection follow-up workflows"
fi
# A new namespace reaches every frontend's cache after a few seconds.
retry 60 tcli operator search-attribute list --namespace "$NAMESPACE" >/dev/null

for pair in $SEARCH_ATTRIBUTES; do
    name=${pair%%=*}; type=${pair#*=}
    if has_attribute "$name"; then
        echo "temporal-setup: search attribute $name already registered"
    else
        echo "temporal-setup: registering search attribute $name ($type)"
        tcli operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type "$type"
    fi
done
for pair in $SEARCH_ATTRIBUTES; do
    retry 60 has_attribute "${pair%%=*}"
done
echo "temporal-setup: done"
