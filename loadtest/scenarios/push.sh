#!/usr/bin/env bash
# Config push at fleet scale: AGENTS agents (TLS WebSocket, or TRANSPORT=http for HTTP polling
# every HEARTBEAT) over GATEWAYS gateways, with the control-plane, NATS and PostgreSQL. Once
# every agent is ready, a Collector configuration is created and published through the API and
# assigned to every agent by a selector on their `loadtest.fleet` attribute. Measured from the
# moment the assignment is posted:
#   offer   — until the last agent received its offer (the agents' own clocks, this machine's),
#             with the offers per agent (exactly one each is the target), p50 and p99;
#   applied — until `GET /api/v1/drift` counts every agent in sync (their APPLIED committed),
#             polled every POLL seconds (default 0.5).
# Then HOLD seconds more (default: a heartbeat and 5 s), so any re-offer on a later message
# shows in the offers per agent, and the control-plane's `ampora_control_plane_config_offers_total`.
# Reference, in the same run: the raw NATS publish rate, against the offers' fan-out rate. The
# machine's load average and the CPU each part used during the push are printed with them.
# PERF=1 records a whole-box profile (perf record -F 999 -a) from the assignment until every
# agent is in sync, in target/loadtest/push.perf.data. STATEMENTS=1 loads pg_stat_statements and
# prints PostgreSQL's time per statement over the same window.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AGENTS=${AGENTS:-100000}
GATEWAYS=${GATEWAYS:-$(((AGENTS + 17999) / 18000))}
RAMP=${RAMP:-2000}
TRANSPORT=${TRANSPORT:-ws}
HEARTBEAT=${HEARTBEAT:-30s}
# Seconds between every agent being ready and the assignment: the ramp's backlog drains.
SETTLE=${SETTLE:-10}
HOLD=${HOLD:-$((${HEARTBEAT%s} + 5))}
PUSH_TIMEOUT=${PUSH_TIMEOUT:-300}
POLL=${POLL:-0.5}
SOURCES=${SOURCES:-127.0.4.1-127.0.4.16}
OUT="$RESULTS/push.txt"
if ! [[ $HEARTBEAT =~ ^[0-9]+s$ ]]; then
    log "HEARTBEAT ($HEARTBEAT) must be whole seconds, e.g. 30s"
    exit 64
fi
case "$TRANSPORT" in
ws) scheme=wss ;;
http) scheme=https ;;
*)
    log "TRANSPORT ($TRANSPORT) must be ws or http"
    exit 64
    ;;
esac

# A collector's config as teams write them: OTLP in, memory_limiter first, batch, OTLP out.
read -r -d '' COLLECTOR_YAML <<'YAML' || true
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 1024
    spike_limit_mib: 256
  batch:
    send_batch_size: 8192
    timeout: 200ms
exporters:
  otlp:
    endpoint: https://127.0.0.1:4317
    compression: gzip
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
    metrics:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
    logs:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
YAML

# api METHOD PATH [JSON]: the response body; fails on a status outside 2xx, printing it.
api() {
    local body status
    body=$(curl -sS -X "$1" -H 'content-type: application/json' -H "authorization: Bearer $API_TOKEN" ${3:+--data "$3"} \
        -w '\n%{http_code}' "$API$2")
    status=${body##*$'\n'}
    body=${body%$'\n'*}
    if [[ $status != 2* ]]; then
        log "$1 $2: $status $body"
        return 1
    fi
    echo "$body"
}

now_ns() { date +%s%N; }

if [[ -n ${STATEMENTS:-} ]]; then
    POSTGRES_OPTIONS="${POSTGRES_OPTIONS:-} -c shared_preload_libraries=pg_stat_statements"
fi
prepare
start_nats
reference_nats=$("$LOADTEST" reference nats-publish --url "$NATS_URL" --duration 5s 2>/dev/null)
start_postgres
start_control_plane
urls=()
gateway_pids=()
for i in $(seq "$GATEWAYS"); do
    start_gateway "gateway-$i"
    urls+=("$scheme://localhost:$GATEWAY_PORT/v1/opamp")
    gateway_pids+=("$GATEWAY_PID")
done
log "$GATEWAYS gateways up"

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
report="$RESULTS/push.json"
"$LOADTEST" agents --url "$(IFS=,; echo "${urls[*]}")" --ca "$CA" --agents "$AGENTS" --ramp "$RAMP" \
    --heartbeat "$HEARTBEAT" --sources "$SOURCES" --fleet push --duration 3600s --progress-interval 5s \
    --progress-file "$progress" --report "$report" >"$WORK/agents.txt" 2> >(tee "$WORK/agents.progress" >&2) &
loadtest=$!
wait_ready "$progress" "$AGENTS" 900
log "all $AGENTS agents ready; settling $SETTLE s"
sleep "$SETTLE"

created=$(api POST /api/v1/configurations "$(python3 -c 'import json, sys
print(json.dumps({"name": "push-at-scale", "description": "the loadtest push scenario",
                  "labels": {"team": "loadtest"}, "yaml": sys.argv[1]}))' "$COLLECTOR_YAML")")
configuration=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$created")
published=$(api POST "/api/v1/configurations/$configuration/publish" '{}')
read -r version hash problems < <(python3 -c 'import json, sys
p = json.loads(sys.argv[1])
print(p["version"], p["hash"], json.dumps(p["problems"], separators=(",", ":")))' "$published")
log "published configuration $configuration version $version, hash $hash, problems: $problems"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [[ -n ${STATEMENTS:-} ]]; then
    psql_run -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
fi
cpu_snapshot "$loadtest" >"$WORK/cpu-before"
if [[ -n ${PERF:-} ]]; then
    perf record -F 999 -a -g -o "$RESULTS/push.perf.data" 2>"$WORK/perf.log" &
    perf_pid=$!
    sleep 1
fi
assigned_ns=$(now_ns)
api POST /api/v1/assignments "{\"configuration_id\": $configuration, \"version\": $version, \"target\": {\"selector\": \"loadtest.fleet=push\"}}" >/dev/null
answered_ns=$(now_ns)
log "assigned to loadtest.fleet=push in $(((answered_ns - assigned_ns) / 1000000)) ms; waiting for every agent in sync"

# Every APPLIED committed: the drift counts every agent in sync, none pending. Parsed in bash,
# so that polling costs the box little besides the query; the query's own time is reported.
in_sync_ns=""
in_sync="?" pending="?" failed="?" out_of_band="?"
polls=0 poll_ms_total=0 poll_ms_max=0
deadline=$((SECONDS + PUSH_TIMEOUT))
while ((SECONDS < deadline)); do
    answer=$(curl -sf -w ' %{time_total}' -H "authorization: Bearer $API_TOKEN" "$API/api/v1/drift?limit=1") || answer=""
    took_ms=$(awk '{printf "%d", $NF * 1000}' <<<"${answer:-0}")
    polls=$((polls + 1)) poll_ms_total=$((poll_ms_total + took_ms))
    ((took_ms > poll_ms_max)) && poll_ms_max=$took_ms
    for state in in_sync pending failed out_of_band; do
        [[ $answer =~ \"$state\":([0-9]+) ]] && printf -v "$state" '%s' "${BASH_REMATCH[1]}"
    done
    if [[ $in_sync == "$AGENTS" && $pending == 0 ]]; then
        in_sync_ns=$(now_ns)
        break
    fi
    sleep "$POLL"
done
cpu_snapshot "$loadtest" >"$WORK/cpu-after"
if [[ -n ${perf_pid:-} ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
statements=""
if [[ -n ${STATEMENTS:-} ]]; then
    statements=$(psql_run -F ' | ' -c "SELECT round(total_exec_time)::bigint || ' ms', calls || ' calls', rows || ' rows',
        left(regexp_replace(regexp_replace(query, '--[^\n]*', '', 'g'), '\s+', ' ', 'g'), 90)
        FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8")
fi
if [[ -z $in_sync_ns ]]; then
    log "not every agent in sync within $PUSH_TIMEOUT s: in_sync $in_sync pending $pending failed $failed out_of_band $out_of_band"
else
    log "every agent in sync $(((in_sync_ns - assigned_ns) / 1000000)) ms after the assignment; holding $HOLD s for re-offers"
fi
sleep "$HOLD"
# The drift query once the push is over, on a quiet fleet: what each poll above cost.
rest_ms=$(for _ in 1 2 3 4 5; do curl -sf -o /dev/null -w '%{time_total}\n' -H "authorization: Bearer $API_TOKEN" "$API/api/v1/drift?limit=1"; done |
    sort -n | awk '{t[NR] = $1 * 1000} END {printf "%.0f", t[3]}')
offers_metric=$(curl -sf "$API/metrics" | awk '/^ampora_control_plane_config_offers_total/ {print $NF}')
kill -TERM "$loadtest"
wait "$loadtest" || true
{
    echo "$(date -u +%FT%TZ) $(machine)"
    echo "commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- control-plane gateway shared src || echo ' (with uncommitted changes)')"
    echo "AGENTS=$AGENTS GATEWAYS=$GATEWAYS RAMP=$RAMP TRANSPORT=$TRANSPORT HEARTBEAT=$HEARTBEAT SETTLE=$SETTLE HOLD=$HOLD"
    echo "reference NATS publish: $reference_nats"
    echo "published: configuration $configuration version $version hash $hash problems $problems"
    grep -E '^(all agents ready|errors)' "$WORK/agents.txt" || true
    python3 - "$report" "$hash" "$AGENTS" "$assigned_ns" "$answered_ns" "${in_sync_ns:-0}" "$offers_metric" \
        "$reference_nats" "$WORK/cpu-before" "$WORK/cpu-after" "$(getconf CLK_TCK)" "$load_before" "$load_after" \
        "in_sync $in_sync pending $pending failed $failed out_of_band $out_of_band" \
        "$polls polls of GET /api/v1/drift every $POLL s, $((poll_ms_total / (polls > 0 ? polls : 1))) ms each on average, at most $poll_ms_max ms; $rest_ms ms (median of 5) once the push was over" <<'PY'
import json, sys
(report, hash_, agents, assigned, answered, in_sync, metric, nats, cpu0, cpu1, tck,
 load0, load1, last_counts, polls) = sys.argv[1:]
agents, assigned, answered, in_sync, tck = int(agents), int(assigned), int(answered), int(in_sync), int(tck)
rollout = json.load(open(report))["rollouts"].get(hash_)
ms = lambda ns: ns / 1e6
print(f"assignment answered in {ms(answered - assigned):.0f} ms")
if rollout is None:
    print(f"offer: no agent was offered {hash_}")
else:
    # Percentiles from the per-100 ms counts of first offers: a bucket's end, from the assignment.
    buckets = sorted((int(tenth), count) for tenth, count in rollout["offered_per_100ms"].items())
    last = ms(rollout["last_offered_unix_ns"] - assigned)
    def at(share):
        need, seen = share * rollout["offered"], 0
        for tenth, count in buckets:
            seen += count
            if seen >= need:
                return min(ms((tenth + 1) * 100_000_000 - assigned), last)
    print(f"offer: {rollout['offered']} of {agents} agents offered the config; the last {last:.0f} ms after the "
          f"assignment (first {ms(rollout['first_offered_unix_ns'] - assigned):.0f} ms, p50 ≤ {at(0.5):.0f} ms, "
          f"p99 ≤ {at(0.99):.0f} ms)")
    print(f"offers per agent: min {rollout['min_offers_per_agent']}, max {rollout['max_offers_per_agent']} "
          f"({rollout['offers']} offers received in all); {rollout['applied']} applied, {rollout['failed']} failed")
    nats_rate = json.loads(nats).get("received_per_second") or 0
    if nats_rate and last > 0:
        print(f"offer fan-out: {rollout['offered'] / (last / 1e3):.0f} agents/s; raw NATS publish and receive "
              f"{nats_rate:.0f} messages/s would take {agents / nats_rate * 1e3:.0f} ms for {agents}")
if in_sync:
    print(f"applied: every agent in sync (APPLIED committed) {ms(in_sync - assigned):.0f} ms after the assignment")
else:
    print(f"applied: NOT every agent in sync; last drift counts: {last_counts}")
print(polls)
print(f"control-plane ampora_control_plane_config_offers_total: {metric or '?'} (agents: {agents})")
print(f"load average (1, 5, 15 min): {load0} before the assignment, {load1} when all were in sync")
window = ((in_sync or answered) - assigned) / 1e9
read = lambda path: dict((part, int(ticks)) for part, ticks in (line.split() for line in open(path)))
before, after = read(cpu0), read(cpu1)
if window > 0:
    shares = ", ".join(f"{part} {(after[part] - before[part]) / tck / window * 100:.0f} %" for part in before)
    total = (sum(after.values()) - sum(before.values())) / tck / window * 100
    print(f"CPU from the assignment to all in sync ({window:.1f} s), share of one core: {shares}; all {total:.0f} %")
PY
    if [[ -n $statements ]]; then
        echo "PostgreSQL time per statement from the assignment to all in sync (pg_stat_statements):"
        echo "$statements" | sed 's/^/  /'
    fi
} | tee -a "$OUT"
