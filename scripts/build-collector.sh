#!/usr/bin/env bash
# Builds the real OpenTelemetry Collector and the OpAMP supervisor that tests/collector.rs runs,
# and links them as target/interop/otelcol and target/interop/opampsupervisor.
#   - the Collector: the collector builder v0.149.0 (itself cached as ocb-v0.149.0) on the
#     manifest tests/collector/builder.yaml
#   - the supervisor: the Go main module tests/collector/supervisor (go.mod and go.sum committed),
#     which imports contrib's cmd/opampsupervisor/supervisor package
# Both are cached outside the repo, in ${AMPORA_CACHE_DIR:-$HOME/.cache/ampora}/collector-<hash>/,
# the hash over the manifest, the module's files, this script and the Go version: a cold build
# takes minutes, a warm run only makes the links. Idempotent; exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "build-collector: $*"; }
fail() {
    echo "build-collector: error: $*" >&2
    exit 1
}

builder_version=v0.149.0
cache="${AMPORA_CACHE_DIR:-$HOME/.cache/ampora}"
manifest="$repo/tests/collector/builder.yaml"
supervisor_src="$repo/tests/collector/supervisor"
links="$repo/target/interop"

go=go
if ! command -v go >/dev/null; then
    [[ -x /usr/local/go/bin/go ]] || fail "no Go toolchain (go) on PATH or in /usr/local/go/bin"
    go=/usr/local/go/bin/go
fi

# What the binaries are made from: a change to any of these makes a new cache entry.
hash="$(
    cd "$repo"
    {
        "$go" version
        sha256sum scripts/build-collector.sh tests/collector/builder.yaml \
            tests/collector/supervisor/go.mod tests/collector/supervisor/go.sum \
            tests/collector/supervisor/*.go
    } | sha256sum | cut -c1-16
)"
built="$cache/collector-$hash"

link() {
    mkdir -p "$links"
    ln -sfn "$built/otelcol" "$links/otelcol"
    ln -sfn "$built/opampsupervisor" "$links/opampsupervisor"
    say "target/interop/{otelcol,opampsupervisor} -> $built"
}

if [[ -x "$built/otelcol" && -x "$built/opampsupervisor" ]]; then
    say "cached ($built)"
    link
    exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/collector-$hash.partial.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- the collector builder -----------------------------------------------------------------
ocb="$cache/ocb-$builder_version"
if ! [[ -x "$ocb" && $("$ocb" version 2>&1) == *" $builder_version" ]]; then
    say "go install go.opentelemetry.io/collector/cmd/builder@$builder_version"
    GOBIN="$work/bin" "$go" install "go.opentelemetry.io/collector/cmd/builder@$builder_version"
    mv -f "$work/bin/builder" "$ocb"
fi

# --- the Collector -------------------------------------------------------------------------
# The manifest's output_path is relative to where the builder runs: here, the work directory.
say "building the Collector from ${manifest#"$repo/"} (a few minutes when cold)"
(
    cd "$work"
    "$ocb" --config "$manifest" >"$work/ocb.log" 2>&1 || {
        cat "$work/ocb.log" >&2
        fail "the collector builder failed"
    }
)
[[ -x "$work/otelcol/otelcol" ]] || fail "the builder made no $work/otelcol/otelcol"
"$work/otelcol/otelcol" components >"$work/components.txt"

# --- the supervisor ------------------------------------------------------------------------
say "building the supervisor from ${supervisor_src#"$repo/"}"
(
    cd "$supervisor_src"
    "$go" build -mod=readonly -buildvcs=false -o "$work/opampsupervisor" .
)

# --- into the cache, whole or not at all ---------------------------------------------------
mkdir -p "$work/entry"
mv "$work/otelcol/otelcol" "$work/opampsupervisor" "$work/components.txt" "$work/entry/"
if ! mv -T "$work/entry" "$built" 2>/dev/null; then
    # Another build of the same inputs finished first: use it.
    [[ -x "$built/otelcol" && -x "$built/opampsupervisor" ]] || fail "cannot move the build to $built"
fi
say "built $built"
link
