#!/usr/bin/env bash
# Status ingest end to end: AGENTS TLS WebSocket agents over GATEWAYS gateways report
# STATUS_RATE health changes per second for DURATION; the report gives the committed rate and
# the agent-send → PostgreSQL-commit latency (from PostgreSQL's own commit timestamps).
# References, in the same run: raw NATS publish rate and raw batched PostgreSQL insert rate.
# EFFECTIVE_CONFIG=BYTES makes every agent report an effective config of that size first, as
# collectors do (health changes then travel beside a large, unchanged config). The latency
# counts from WARMUP after every agent is ready, once the ramp's backlog has drained; the
# report's 10 s windows show the whole run. After the latency lines, the CPU each part of the
# system used in the measured window: share of one core, and microseconds per status message.
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
# DURATION and WARMUP in seconds (e.g. 150s): the script times its CPU window with them.
if ! [[ $DURATION =~ ^[0-9]+s$ && $WARMUP =~ ^[0-9]+s$ ]]; then
    log "DURATION ($DURATION) and WARMUP ($WARMUP) must be whole seconds, e.g. 150s"
    exit 64
fi

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
gateway_pids=()
for i in $(seq "$GATEWAYS"); do
    start_gateway "gateway-$i"
    urls+=("$GATEWAY_URL")
    gateway_pids+=("$GATEWAY_PID")
done

# cpu_snapshot LOADTEST_PID: one "part ticks" line per part of the system.
cpu_snapshot() {
    echo "control-plane $(cpu_ticks_of "$CONTROL_PLANE_PID")"
    echo "gateways $(cpu_ticks_of "${gateway_pids[@]}")"
    echo "nats $(cpu_ticks_of "$NATS_PID")"
    # shellcheck disable=SC2046
    echo "postgresql $(cpu_ticks_of $(pgrep -u postgres))"
    # shellcheck disable=SC2046
    echo "load-generator $(cpu_ticks_of "$1" $(pgrep -P "$1"))"
}

progress="$WORK/progress.json"
wal_at_start=$(wal_bytes)
launched=$SECONDS
"$LOADTEST" agents --url "$(IFS=,; echo "${urls[*]}")" --ca "$CA" --agents "$AGENTS" --ramp "$RAMP" \
    --status-rate "$STATUS_RATE" --effective-config-bytes "$EFFECTIVE_CONFIG" --sources "$SOURCES" --duration "$DURATION" --warmup "$WARMUP" --progress-interval 5s \
    --progress-file "$progress" --report "$RESULTS/ingest.json" --database-url "$DATABASE_URL" >"$WORK/ingest-report.txt" &
loadtest=$!
wait_ready "$progress" "$AGENTS" 600
# The CPU window: from the end of the warm-up to 3 s before the agents stop sending, which they
# do DURATION after their ramp.
sleep "${WARMUP%s}"
sending_ends=$((launched + (AGENTS + RAMP - 1) / RAMP + ${DURATION%s}))
window=$((sending_ends - 3 - SECONDS))
if ((window < 5)); then
    log "no CPU window: DURATION ($DURATION) leaves too little sending after the warm-up"
    window=0
fi
cpu_snapshot "$loadtest" >"$WORK/cpu-before"
progress_before="$(json_field "$progress" sent) $(json_field "$progress" elapsed_seconds)"
sleep "$window"
cpu_snapshot "$loadtest" >"$WORK/cpu-after"
progress_after="$(json_field "$progress" sent) $(json_field "$progress" elapsed_seconds)"
wait "$loadtest"
wal_written=$(($(wal_bytes) - wal_at_start))
{
    cat "$WORK/ingest-report.txt"
    echo "PostgreSQL WAL written by the run: $((wal_written / 1048576)) MiB (segments made up front: $WAL_PREWARM_GB GiB)"
    python3 - "$WORK/cpu-before" "$WORK/cpu-after" "$progress_before" "$progress_after" "$window" "$(getconf CLK_TCK)" <<'PY'
import sys
before, after, progress0, progress1, window, tck = sys.argv[1:]
if window == "0":
    sys.exit()
read = lambda path: dict((part, int(ticks)) for part, ticks in (line.split() for line in open(path)))
before, after = read(before), read(after)
# The progress file is a few seconds old at any moment: the rate comes from its own clock.
(sent0, at0), (sent1, at1) = (map(float, progress.split()) for progress in (progress0, progress1))
window, tck = int(window), int(tck)
messages = round((sent1 - sent0) / max(at1 - at0, 1) * window)
print(f"CPU over {window} s of sending ({messages} messages):")
for part in before:
    seconds = (after[part] - before[part]) / tck
    print(f"  {part:15} {seconds / window * 100:5.1f} % of a core, {seconds / max(messages, 1) * 1e6:6.1f} us per message")
total = sum(after.values()) - sum(before.values())
print(f"  {'all':15} {total / tck / window * 100:5.1f} % of a core, {total / tck / max(messages, 1) * 1e6:6.1f} us per message")
PY
} | tee -a "$OUT"
