#!/usr/bin/env bash
# Installs what the tests need, idempotently (quick when everything is there):
#   - Debian packages: postgresql (tests start their own servers), nats-server, haproxy
#   - a Python venv at .venv with the PyPI OpAMP client the interop tests drive
#   - the Go interop agent (built with the Go module proxy) at target/interop/go-agent
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

packages=(postgresql nats-server haproxy systemd)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "install-test-deps: installing ${missing[*]}"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="$repo/.venv"
requirements="$repo/tests/interop/python-agent/requirements.txt"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$requirements" "$venv/.requirements"; then
    echo "install-test-deps: creating the Python venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/.requirements"
fi

echo "install-test-deps: building the Go interop agent"
mkdir -p "$repo/target/interop"
(cd "$repo/tests/interop/go-agent" && go build -o "$repo/target/interop/go-agent" .)
echo "install-test-deps: ready"
