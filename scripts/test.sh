#!/usr/bin/env bash
# Runs every test: installs what the tests need (Debian packages, the Python venv, Go modules,
# the Collector and its supervisor, cargo-machete), checks formatting, lints and unused
# dependencies (failing fast, before any test), then the whole Rust workspace — unit tests,
# the storage suite on SQLite and PostgreSQL, the end-to-end, interop and Collector tests
# (which start their own PostgreSQL, NATS and `ampora` processes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo machete
cargo build --workspace --all-targets
cargo test --workspace --all-targets "$@"
