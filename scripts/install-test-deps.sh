#!/usr/bin/env bash
# Installs what the tests need. Idempotent, and quick when everything is already there.
#   - Debian packages: postgresql (the tests start their own servers from its binaries),
#     nats-server and haproxy (cluster tests), systemd (systemd-analyze checks the units)
#   - a Python venv at $REPO/.venv with the PyPI OpAMP client the interop tests drive
#     (pinned in tests/interop/python-agent/requirements.txt)
#   - the opamp-go interop agent, built through the Go module proxy into
#     $REPO/target/interop/go-agent
#   - the OpenTelemetry Collector and its OpAMP supervisor (scripts/build-collector.sh: built
#     once into ~/.cache/ampora, linked as $REPO/target/interop/{otelcol,opampsupervisor})
#   - cargo-machete (pinned), the unused-dependency check of scripts/test.sh
# Runs as root (or with sudo) on Debian; exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "install-test-deps: $*"; }
fail() {
    echo "install-test-deps: error: $*" >&2
    exit 1
}

sudo=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || fail "not root and no sudo: cannot run apt-get"
    sudo="sudo"
fi

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# --- Debian packages -----------------------------------------------------------------------
packages=(postgresql nats-server haproxy systemd procps softhsm2 opensc chromium chromium-driver)
# The venv needs a python3 with venv and ensurepip; Debian's python3 has them in python3-venv.
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    packages+=(python3 python3-venv)
fi
missing=()
for package in "${packages[@]}"; do
    installed "$package" || missing+=("$package")
done
if ((${#missing[@]})); then
    say "apt-get update"
    $sudo apt-get update -qq
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
else
    say "Debian packages present (${packages[*]})"
fi

# --- Python venv with opentelemetry-opamp-client -------------------------------------------
python=python3
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    python=/usr/bin/python3 # Debian's, with python3-venv just installed
fi
venv="$repo/.venv"
requirements="$repo/tests/interop/python-agent/requirements.txt"
venv_ok() {
    [[ -x "$venv/bin/python" ]] &&
        cmp -s "$requirements" "$venv/.requirements" &&
        "$venv/bin/python" -c 'import opentelemetry._opamp' 2>/dev/null
}
if venv_ok; then
    say "Python venv up to date ($venv)"
else
    say "creating the Python venv at $venv"
    "$python" -m venv --clear "$venv"
    say "pip install -r ${requirements#"$repo/"}"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    "$venv/bin/python" -c 'import opentelemetry._opamp' ||
        fail "opentelemetry-opamp-client does not import in $venv"
    cp "$requirements" "$venv/.requirements"
fi

# --- the opamp-go agent --------------------------------------------------------------------
go=go
if ! command -v go >/dev/null; then
    [[ -x /usr/local/go/bin/go ]] || fail "no Go toolchain (go) on PATH or in /usr/local/go/bin"
    go=/usr/local/go/bin/go
fi
agent_src="$repo/tests/interop/go-agent"
agent_bin="$repo/target/interop/go-agent"
say "building the opamp-go agent into ${agent_bin#"$repo/"} ($($go version | cut -d' ' -f3))"
mkdir -p "$(dirname "$agent_bin")"
(
    cd "$agent_src"
    "$go" mod download
    "$go" build -buildvcs=false -o "$agent_bin" .
)

# --- the Collector and the OpAMP supervisor ------------------------------------------------
"$repo/scripts/build-collector.sh"

# --- cargo-machete -------------------------------------------------------------------------
machete_version=0.9.2
if [[ $(cargo machete --version 2>/dev/null) == "$machete_version" ]]; then
    say "cargo-machete $machete_version present"
else
    say "cargo install cargo-machete $machete_version"
    cargo install --quiet --locked cargo-machete --version "$machete_version"
fi
say "ready"
