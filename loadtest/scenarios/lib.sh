# Shared by the scenario scripts (sourced, not run): builds the release binaries, tunes the
# kernel where permitted, starts NATS, PostgreSQL, the control-plane, gateways and reference
# servers on free loopback ports, and stops all of it on exit. Needs root (PostgreSQL runs as
# the `postgres` user) and what `scripts/install-test-deps.sh` installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
AMPORA="$ROOT/target/release/ampora"
LOADTEST="$ROOT/target/release/ampora-loadtest"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# WAL segments made before a run, GiB (max_wal_size is twice this).
WAL_PREWARM_GB="${WAL_PREWARM_GB:-4}"
RESULTS="${RESULTS:-$ROOT/target/loadtest}"
WORK="$(mktemp -d /tmp/ampora-scenario.XXXXXX)"
chmod 755 "$WORK"
mkdir -p "$RESULTS"
PIDS=()
PG_DATA=""

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [[ -n "$PG_DATA" ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    # The servers' logs of the last run stay for reading.
    rm -rf "$RESULTS/logs"
    mkdir -p "$RESULTS/logs"
    cp "$WORK"/*.log "$RESULTS/logs/" 2>/dev/null || true
    if [[ -n "$PG_DATA" ]]; then cp "$PG_DATA/server.log" "$RESULTS/logs/postgresql.log" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[$(date +%T)] $*" >&2; }

build() {
    log "building release binaries"
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p ampora -p ampora-loadtest
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on port $1 after 30 s"
    return 1
}

set_sysctl() {
    local path="/proc/sys/${1//.//}"
    if echo "$2" >"$path" 2>/dev/null; then
        log "sysctl $1 = $2"
    else
        log "could not set $1 (it stays $(cat "$path")); results may hit that limit"
    fi
}

# Many connections from one machine: a wide ephemeral port range, deep accept queues.
tune_kernel() {
    set_sysctl net.ipv4.ip_local_port_range "1024 65000"
    set_sysctl net.core.somaxconn 65535
    set_sysctl net.ipv4.tcp_max_syn_backlog 65535
    set_sysctl net.ipv4.tcp_tw_reuse 1
    ulimit -n "$(ulimit -Hn)"
}

# A private CA and an ECDSA P-256 server certificate for localhost and 127.0.0.1.
make_certs() {
    CA="$WORK/ca.pem"
    SERVER_CERT="$WORK/server.pem"
    SERVER_KEY="$WORK/server.key"
    local curve=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${curve[@]}" -subj /CN=loadtest-ca -days 2 -keyout "$WORK/ca.key" -out "$CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
    openssl req "${curve[@]}" -subj /CN=localhost -keyout "$SERVER_KEY" -out "$WORK/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$WORK/server.ext"
    openssl x509 -req -in "$WORK/server.csr" -CA "$CA" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
        -extfile "$WORK/server.ext" -out "$SERVER_CERT" 2>/dev/null
}

# make_client_cert: an agent certificate from the same private CA, for client authentication
# (MTLS=1 scenarios): CLIENT_CERT, CLIENT_KEY.
make_client_cert() {
    CLIENT_CERT="$WORK/client.pem"
    CLIENT_KEY="$WORK/client.key"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=loadtest-agent \
        -keyout "$CLIENT_KEY" -out "$WORK/client.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' >"$WORK/client.ext"
    openssl x509 -req -in "$WORK/client.csr" -CA "$CA" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
        -extfile "$WORK/client.ext" -out "$CLIENT_CERT" 2>/dev/null
}

# start_trust: publishes the private CA as the trust state on NATS, as a control-plane does with
# Ampora's CA, so gateways with AMPORA_TLS_CLIENT_AUTH accept CLIENT_CERT.
start_trust() {
    "$LOADTEST" trust --nats-url "$NATS_URL" --ca "$CA" >"$WORK/trust.log" 2>&1 &
    PIDS+=($!)
}

# wait_trusted PORT: until the gateway on PORT holds a trust state (its /readyz, which needs a
# client certificate of its CA to be asked).
wait_trusted() {
    for _ in $(seq 300); do
        curl -sf --cacert "$CA" --cert "$CLIENT_CERT" --key "$CLIENT_KEY" \
            "https://localhost:$1/readyz" >/dev/null && return 0
        sleep 0.1
    done
    log "the gateway on port $1 holds no trust state after 30 s"
    return 1
}

start_nats() {
    NATS_PORT=$(free_port)
    nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
    PIDS+=($!)
    NATS_PID=$!
    NATS_URL="nats://127.0.0.1:$NATS_PORT"
    wait_port "$NATS_PORT"
    log "NATS on $NATS_URL"
}

# track_commit_timestamp lets the load generator read each row's commit time back. The WAL and
# checkpoint settings are the usual ones for a write-heavy server: with the defaults (1 GB,
# 5 min) 20k changes/s force a checkpoint every few seconds. Durability stays at the defaults
# (fsync, synchronous_commit on). min_wal_size keeps the segments prewarm_wal makes.
# POSTGRES_OPTIONS adds server settings for a run (e.g. "-c track_wal_io_timing=on").
start_postgres() {
    PG_DATA="$WORK/pg"
    mkdir -p "$PG_DATA"
    chown postgres "$PG_DATA"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres >/dev/null
    PG_PORT=$(free_port)
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -o \
        "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1 -c track_commit_timestamp=on -c max_connections=200 -c shared_buffers=1GB -c max_wal_size=$((2 * WAL_PREWARM_GB))GB -c min_wal_size=${WAL_PREWARM_GB}GB -c checkpoint_timeout=15min ${POSTGRES_OPTIONS:-}" \
        start >/dev/null
    DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    prewarm_wal
    log "PostgreSQL on $DATABASE_URL"
}

# psql ARGS...: runs psql against the scenario's PostgreSQL, unaligned and tuples only.
psql_run() {
    runuser -u postgres -- "$PG_BIN/psql" -h "$PG_DATA" -p "$PG_PORT" -U postgres -qAt "$@"
}

# A server that has run a while reuses its WAL segments, recycled at each checkpoint. A fresh
# cluster instead creates and zero-fills a new 16 MB segment whenever the WAL reaches the end
# of one, inside a commit, with every other committer waiting: at 20k changes/s, once a second.
# So the segments a run needs (WAL_PREWARM_GB) are made up front, then recycled by a checkpoint.
prewarm_wal() {
    log "preparing $WAL_PREWARM_GB GiB of WAL segments, as a server in steady state has them"
    psql_run -c "CREATE TABLE wal_prewarm (n int)" \
        -c "DO \$\$ BEGIN FOR n IN 1..$((WAL_PREWARM_GB * 64)) LOOP INSERT INTO wal_prewarm VALUES (n); PERFORM pg_switch_wal(); END LOOP; END \$\$" \
        -c "DROP TABLE wal_prewarm" -c "CHECKPOINT" >/dev/null
}

# WAL written since the server started, in bytes.
wal_bytes() {
    psql_run -c "SELECT wal_bytes FROM pg_stat_wal"
}

# The control-plane's first account is admin with this password; scenarios call the API with
# an admin API token ($API_TOKEN) made after it starts.
ADMIN_PASSWORD="loadtest-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

start_control_plane() {
    local port
    port=$(free_port)
    AMPORA_DATABASE_URL="$DATABASE_URL" AMPORA_NATS_URL="$NATS_URL" AMPORA_HTTP_LISTEN="127.0.0.1:$port" \
        AMPORA_ADMIN_PASSWORD="$ADMIN_PASSWORD" AMPORA_DATA_DIR="$WORK/control-plane" \
        RUST_LOG="${RUST_LOG:-warn}" "$AMPORA" control-plane >"$WORK/control-plane.log" 2>&1 &
    PIDS+=($!)
    CONTROL_PLANE_PID=$!
    API="http://127.0.0.1:$port"
    for _ in $(seq 300); do
        curl -sf "$API/readyz" >/dev/null && break
        sleep 0.1
    done
    API_TOKEN=$(admin_api_token)
    log "control-plane API on $API"
}

# Signs in as admin and makes an API token with the admin role: the token.
admin_api_token() {
    local jar="$WORK/api.cookies" csrf
    csrf=$(curl -sSf -c "$jar" -H 'content-type: application/json' \
        --data "{\"username\": \"admin\", \"password\": \"$ADMIN_PASSWORD\"}" "$API/api/v1/auth/login" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["csrf_token"])')
    curl -sSf -b "$jar" -H "x-csrf-token: $csrf" -H 'content-type: application/json' \
        --data '{"name": "loadtest", "role": "admin"}' "$API/api/v1/api-tokens" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}

# One TLS session ticket key for the run (TICKET_KEYS): every gateway started after this shares
# it, so an agent's session resumes on any of them, as with AMPORA_TLS_TICKET_KEY_FILE in
# production.
make_ticket_keys() {
    TICKET_KEYS="$WORK/tls-ticket-keys"
    head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TICKET_KEYS"
    log "gateways share the TLS ticket key in $TICKET_KEYS"
}

# start_gateway NAME: sets GATEWAY_PID and GATEWAY_URL (TLS WebSocket). Logs at the level
# operators run, so whatever logging costs per connection is part of the figures.
start_gateway() {
    local port shared_tickets=()
    port=$(free_port)
    if [[ -n "${TICKET_KEYS:-}" ]]; then
        shared_tickets=("AMPORA_TLS_TICKET_KEY_FILE=$TICKET_KEYS")
    fi
    AMPORA_OPAMP_LISTEN="127.0.0.1:$port" AMPORA_GATEWAY_ID="$1" AMPORA_NATS_URL="$NATS_URL" \
        AMPORA_TLS_CERT="$SERVER_CERT" AMPORA_TLS_KEY="$SERVER_KEY" AMPORA_MAX_CONNECTIONS=19900 \
        RUST_LOG="${RUST_LOG:-info}" env "${shared_tickets[@]}" "$AMPORA" gateway >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    GATEWAY_PID=$!
    GATEWAY_PORT=$port
    GATEWAY_URL="wss://localhost:$port/v1/opamp"
    wait_port "$port"
}

# start_reference KIND: a bare `ws-server` or `tls-accept`; sets REFERENCE_PID and REFERENCE_PORT.
start_reference() {
    REFERENCE_PORT=$(free_port)
    "$LOADTEST" reference "$1" --listen "127.0.0.1:$REFERENCE_PORT" --cert "$SERVER_CERT" --key "$SERVER_KEY" \
        >"$WORK/reference-$1.log" 2>&1 &
    PIDS+=($!)
    REFERENCE_PID=$!
    wait_port "$REFERENCE_PORT"
}

# full_handshakes PORT DURATION: full TLS handshakes per second against 127.0.0.1:PORT
# (CONCURRENCY at once, from their own source addresses); the JSON result.
# client_identity: the agents' certificate options with MTLS=1, nothing otherwise.
client_identity() {
    if [[ "${MTLS:-0}" == 1 ]]; then echo --client-cert "$CLIENT_CERT" --client-key "$CLIENT_KEY"; fi
}

full_handshakes() {
    # shellcheck disable=SC2046 # the options are words
    "$LOADTEST" reference handshakes --target "127.0.0.1:$1" --ca "$CA" --server-name localhost $(client_identity) \
        --concurrency "${CONCURRENCY:-32}" --duration "$2" --sources 127.0.3.1-127.0.3.8 2>/dev/null
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# User + system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cpu_ticks_of PID...: their user + system CPU time together (processes gone count as 0).
cpu_ticks_of() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(cpu_ticks "$pid" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# json_field FILE KEY: one top-level (or counters.KEY) value of a JSON file.
json_field() {
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(d[sys.argv[2]] if sys.argv[2] in d else d["counters"][sys.argv[2]])' "$1" "$2"
}

# wait_ready PROGRESS_FILE COUNT TIMEOUT_SECONDS
wait_ready() {
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        if [[ -f "$1" ]] && (($(json_field "$1" ready) >= $2)); then
            return 0
        fi
        sleep 1
    done
    log "not all $2 agents ready within $3 s"
    return 1
}

# What every scenario does first: binaries, kernel settings, certificates, the machine line.
prepare() {
    build
    tune_kernel
    make_certs
    if [[ "${MTLS:-0}" == 1 ]]; then make_client_cert; fi
    log "$(machine)"
}

machine() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r), $(rustc --version), nats-server $(nats-server --version | awk '{print $NF}'), $("$PG_BIN/postgres" --version)"
}
