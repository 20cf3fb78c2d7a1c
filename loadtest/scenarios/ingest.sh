#!/usr/bin/env bash
# Status ingest end to end: AGENTS TLS WebSocket agents over GATEWAYS gateways report
# STATUS_RATE health changes per second for DURATION; the report gives the committed rate and
# the agent-send → PostgreSQL-commit latency (from PostgreSQL's own commit timestamps).
# References, in the same run: raw NATS publish rate and raw batched PostgreSQL insert rate.
# EFFECTIVE_CONFIG=BYTES makes every agent report an effective config of that size first, as
# collectors do (health changes then travel beside a large, unchanged config). The latency
# counts from WARMUP after every agent is ready, once the ramp's backlog has drained; the
# report's 10 s windows show the whole run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AGENTS=${AGENTS:-20000}
GATEWAYS=${GATEWAYS:-2}
STATUS_RATE=${STATUS_RATE:-20000}
DURATION=${DURATION:-60s}
RAMP=${RAMP:-4000}
EFFECTIVE_CONFIG=${EFFECTIVE_CONFIG:-0}
WARMUP=${WARMUP:-30s}
SOURCES=${SOURCES:-127.0.2.1-127.0.2.8}
OUT="$RESULTS/ingest.txt"

prepare
start_nats
start_postgres
{
    echo "$(date -u +%FT%TZ) $(machine)"
    echo "AGENTS=$AGENTS GATEWAYS=$GATEWAYS STATUS_RATE=$STATUS_RATE DURATION=$DURATION WARMUP=$WARMUP EFFECTIVE_CONFIG=$EFFECTIVE_CONFIG"
    echo "reference NATS publish: $("$LOADTEST" reference nats-publish --url "$NATS_URL" --duration 10s 2>/dev/null)"
    echo "reference PostgreSQL batched insert: $("$LOADTEST" reference pg-insert --database-url "$DATABASE_URL" --batch 512 --duration 10s 2>/dev/null)"
} | tee -a "$OUT"
start_control_plane
urls=()
for i in $(seq "$GATEWAYS"); do
    start_gateway "gateway-$i"
    urls+=("$GATEWAY_URL")
done
"$LOADTEST" agents --url "$(IFS=,; echo "${urls[*]}")" --ca "$CA" --agents "$AGENTS" --ramp "$RAMP" \
    --status-rate "$STATUS_RATE" --effective-config-bytes "$EFFECTIVE_CONFIG" --sources "$SOURCES" --duration "$DURATION" --warmup "$WARMUP" --progress-interval 5s \
    --report "$RESULTS/ingest.json" --database-url "$DATABASE_URL" | tee -a "$OUT"
