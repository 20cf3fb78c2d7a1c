#!/usr/bin/env bash
# TLS handshake rate: full handshakes (no resumption) against the Ampora gateway and against a
# bare rustls accept loop with the same certificate and settings, one after the other.
# MTLS=1: both require a client certificate (the gateway with AMPORA_TLS_CLIENT_AUTH=required,
# verifying against the trust state on the bus; the bare loop with rustls' own verifier), and
# every handshake presents one.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-15s}
OUT="$RESULTS/handshake.txt"

prepare
start_nats
if [[ "${MTLS:-0}" == 1 ]]; then start_trust; fi
start_gateway gateway-1
gateway=$(full_handshakes "$GATEWAY_PORT" "$DURATION")
kill -TERM "$GATEWAY_PID"
# TLS 1.3 clients finish before the server has judged their certificate: a refusal would not
# show in the client's count, so count the gateway's.
refused=$(grep -c "client certificate refused" "$WORK/gateway-1.log" || true)
start_reference tls-accept
bare=$(full_handshakes "$REFERENCE_PORT" "$DURATION")
{
    echo "$(date -u +%FT%TZ) $(machine)"
    echo "MTLS=${MTLS:-0} CONCURRENCY=$CONCURRENCY DURATION=$DURATION; client certificates the gateway refused: $refused"
    echo "ampora gateway: $gateway"
    echo "bare rustls:    $bare"
    python3 -c 'import json, sys; g, b = (json.loads(a)["per_second"] for a in sys.argv[1:]); print(f"gateway / bare = {g / b:.1%}")' "$gateway" "$bare"
} | tee -a "$OUT"
