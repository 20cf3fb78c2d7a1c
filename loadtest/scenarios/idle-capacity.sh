#!/usr/bin/env bash
# Idle capacity: AGENTS TLS WebSocket agents connected and heartbeating on ONE gateway process.
# Gateway memory per connection = (RSS at AGENTS − RSS at 0) / AGENTS, and CPU per heartbeat.
# Reference, in the same run: a bare tokio-tungstenite server with the gateway's TLS settings
# and buffer sizes, held by the same agents. EFFECTIVE_CONFIG=BYTES makes every agent report an
# effective config that large in its first message, as collectors do. MTLS=1: the gateway and
# the bare server both require client certificates, and every agent presents one.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AGENTS=${AGENTS:-19000}
# A ramp this box absorbs as it comes: at 2,000/s the TLS handshakes queue for seconds, and the
# heap their peak leaves behind would be counted as per-connection memory.
RAMP=${RAMP:-500}
HEARTBEAT=${HEARTBEAT:-30s}
EFFECTIVE_CONFIG=${EFFECTIVE_CONFIG:-0}
CPU_WINDOW=${CPU_WINDOW:-60}
SOURCES=${SOURCES:-127.0.1.1-127.0.1.4}
OUT="$RESULTS/idle-capacity.txt"

# measure LABEL PID URL: holds AGENTS agents on PID's server and prints memory and CPU figures.
measure() {
    local label=$1 pid=$2 url=$3 progress="$WORK/progress-$2.json"
    sleep 2
    local rss_before
    rss_before=$(rss_kib "$pid")
    # shellcheck disable=SC2046 # the options are words
    "$LOADTEST" agents --url "$url" --ca "$CA" $(client_identity) --agents "$AGENTS" --ramp "$RAMP" --heartbeat "$HEARTBEAT" \
        --effective-config-bytes "$EFFECTIVE_CONFIG" \
        --sources "$SOURCES" --duration 3600s --progress-interval 5s --progress-file "$progress" \
        --report "$RESULTS/idle-$label.json" >"$WORK/idle-$label.txt" 2>"$WORK/idle-$label.progress" &
    local loadtest=$!
    wait_ready "$progress" "$AGENTS" 600
    sleep 15
    local rss_held cpu_before sent_before
    rss_held=$(rss_kib "$pid")
    cpu_before=$(cpu_ticks "$pid")
    sent_before=$(json_field "$progress" sent)
    sleep "$CPU_WINDOW"
    local cpu_after sent_after rss_after
    cpu_after=$(cpu_ticks "$pid")
    sent_after=$(json_field "$progress" sent)
    rss_after=$(rss_kib "$pid")
    kill -TERM "$loadtest"
    wait "$loadtest" || true
    python3 - "$label" "$AGENTS" "$rss_before" "$rss_held" "$rss_after" "$cpu_before" "$cpu_after" \
        "$sent_before" "$sent_after" "$(getconf CLK_TCK)" "${MTLS:-0}" <<'PY' | tee -a "$OUT"
import sys
label, agents, rss0, rss1, rss2, cpu0, cpu1, sent0, sent1, tck, mtls = sys.argv[1:]
agents, rss0, rss1, rss2 = int(agents), int(rss0), int(rss1), int(rss2)
messages = int(sent1) - int(sent0)
cpu = (float(cpu1) - float(cpu0)) / int(tck)
print(f"{label}: {agents} idle {'mTLS' if mtls == '1' else 'TLS'} WebSocket connections; RSS {rss0 / 1024:.1f} MiB -> {rss1 / 1024:.1f} MiB "
      f"({rss2 / 1024:.1f} MiB after the CPU window): {(rss1 - rss0) * 1024 / agents / 1024:.2f} KiB per connection; "
      f"{messages} heartbeats in the window, {cpu:.2f} s CPU: {cpu / max(messages, 1) * 1e6:.1f} us per heartbeat")
PY
}

prepare
echo "$(date -u +%FT%TZ) $(machine)" >>"$OUT"
echo "AGENTS=$AGENTS HEARTBEAT=$HEARTBEAT EFFECTIVE_CONFIG=$EFFECTIVE_CONFIG MTLS=${MTLS:-0}" | tee -a "$OUT"
start_nats
start_postgres
start_control_plane
if [[ "${MTLS:-0}" == 1 ]]; then start_trust; fi
start_gateway gateway-1
log "Ampora gateway on $GATEWAY_URL"
measure ampora-gateway "$GATEWAY_PID" "$GATEWAY_URL"
kill -TERM "$GATEWAY_PID"
start_reference ws-server
log "bare tokio-tungstenite server on port $REFERENCE_PORT"
measure bare-tungstenite "$REFERENCE_PID" "wss://localhost:$REFERENCE_PORT/v1/opamp"
