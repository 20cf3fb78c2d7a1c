#!/usr/bin/env bash
# TLS handshake rate: full handshakes (no resumption) against the Ampora gateway and against a
# bare rustls accept loop with the same certificate and settings, one after the other.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-15s}
OUT="$RESULTS/handshake.txt"

prepare
start_nats
start_gateway gateway-1
gateway=$(full_handshakes "$GATEWAY_PORT" "$DURATION")
kill -TERM "$GATEWAY_PID"
start_reference tls-accept
bare=$(full_handshakes "$REFERENCE_PORT" "$DURATION")
{
    echo "$(date -u +%FT%TZ) $(machine)"
    echo "ampora gateway: $gateway"
    echo "bare rustls:    $bare"
    python3 -c 'import json, sys; g, b = (json.loads(a)["per_second"] for a in sys.argv[1:]); print(f"gateway / bare = {g / b:.1%}")' "$gateway" "$bare"
} | tee -a "$OUT"
