#!/usr/bin/env bash
# The whole box: AGENTS TLS WebSocket agents ramped onto GATEWAYS gateway processes, with the
# control-plane, NATS and PostgreSQL; they heartbeat (and change status at STATUS_RATE/s) for
# HOLD seconds. Then every one of those gateways is killed (-9) at once, and the agents come
# back through GATEWAYS standby gateways: the report gives the time from the first lost
# connection until every agent is back with its new connection committed, and how many of
# those reconnects resumed their TLS session. All gateways share one ticket key
# (AMPORA_TLS_TICKET_KEY_FILE), so agents resume on the standbys; SHARED_TICKETS=0 gives each
# gateway its own key, and every reconnect a full handshake.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AGENTS=${AGENTS:-100000}
GATEWAYS=${GATEWAYS:-6}
RAMP=${RAMP:-2000}
HEARTBEAT=${HEARTBEAT:-30s}
STATUS_RATE=${STATUS_RATE:-0}
HOLD=${HOLD:-60}
SOURCES=${SOURCES:-127.0.1.1-127.0.1.40}
SHARED_TICKETS=${SHARED_TICKETS:-1}
OUT="$RESULTS/fleet.txt"

prepare
# The reference, measured first on the quiet box: how fast a bare rustls accept loop does full
# handshakes here (client included), and so how long the storm's reconnects would take at that
# rate if every one were a full handshake and nothing else ran.
start_reference tls-accept
bare_handshakes=$(full_handshakes "$REFERENCE_PORT" 10s)
kill -TERM "$REFERENCE_PID"
if [[ "$SHARED_TICKETS" == 1 ]]; then
    make_ticket_keys
fi
start_nats
start_postgres
start_control_plane
primaries=() standbys=() standby_ports=() primary_pids=()
for i in $(seq "$GATEWAYS"); do
    start_gateway "gateway-$i"
    primaries+=("$GATEWAY_URL")
    primary_pids+=("$GATEWAY_PID")
done
for i in $(seq "$GATEWAYS"); do
    start_gateway "standby-$i"
    standbys+=("$GATEWAY_URL")
    standby_ports+=("$GATEWAY_PORT")
done
log "$GATEWAYS gateways and $GATEWAYS standbys up"

progress="$WORK/progress.json"
report="$RESULTS/fleet.json"
"$LOADTEST" agents --url "$(IFS=,; echo "${primaries[*]}")" --standby-url "$(IFS=,; echo "${standbys[*]}")" \
    --ca "$CA" --agents "$AGENTS" --ramp "$RAMP" --heartbeat "$HEARTBEAT" --status-rate "$STATUS_RATE" \
    --sources "$SOURCES" --duration 3600s --progress-interval 5s --progress-file "$progress" \
    --report "$report" --database-url "$DATABASE_URL" >"$WORK/fleet.txt" 2> >(tee "$WORK/fleet.progress" >&2) &
loadtest=$!
wait_ready "$progress" "$AGENTS" 900
log "all $AGENTS agents ready; holding $HOLD s"
sleep "$HOLD"
log "RSS (MiB): control-plane $(($(rss_kib "$CONTROL_PLANE_PID") / 1024)), NATS $(($(rss_kib "$NATS_PID") / 1024)), gateways $(for pid in "${primary_pids[@]}"; do echo -n "$(($(rss_kib "$pid") / 1024)) "; done)"
log "killing all $GATEWAYS gateways"
kill -KILL "${primary_pids[@]}"
sleep 5
wait_ready "$progress" "$AGENTS" 600 || true
sleep 5
# What the standbys did with the storm's connections, from their own metrics: handshakes by
# kind, connections turned away by reason.
standby_counts=$(for port in "${standby_ports[@]}"; do
    curl -s --max-time 10 --cacert "$CA" --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/metrics"
done | awk -F'[{}"]' '/^ampora_gateway_(tls_handshakes|connections_rejected)_total\{/ {
    sum[$1 " " $3] += $NF
} END { for (key in sum) printf "%s %d; ", key, sum[key] }')
kill -TERM "$loadtest"
wait "$loadtest" || true
{
    echo "$(date -u +%FT%TZ) $(machine)"
    echo "AGENTS=$AGENTS GATEWAYS=$GATEWAYS RAMP=$RAMP HEARTBEAT=$HEARTBEAT STATUS_RATE=$STATUS_RATE HOLD=$HOLD SHARED_TICKETS=$SHARED_TICKETS"
    echo "reference bare rustls full handshakes: $bare_handshakes"
    python3 -c 'import json, sys; rate = json.loads(sys.argv[1])["per_second"]; print(f"{sys.argv[2]} full handshakes alone at that rate: {int(sys.argv[2]) / rate:.1f} s")' "$bare_handshakes" "$AGENTS"
    cat "$WORK/fleet.txt"
    echo "standbys: $standby_counts"
} | tee -a "$OUT"
