#!/usr/bin/env bash
# Builds policy.wasm from src/ with ComponentizeJS (jco componentize), against the daemon's WIT
# world in ../../wit. Installs the pinned toolchain first when node_modules is missing or older
# than package-lock.json (`npm ci`: exact versions from the lock file, from the npm registry).
# Skips the build when policy.wasm is newer than every input. Needs node >= 20 and npm.
# Called by scripts/test.sh and by the tests' helper (tests/common/policies.rs).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x node_modules/.bin/jco ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "== policies/js: npm ci (jco and componentize-js, pinned in package-lock.json)"
  npm ci --no-audit --no-fund
fi

out=policy.wasm
inputs=(src/*.js ../../wit/policy.wit package-lock.json build.sh)
if [ -f "$out" ] && [ -z "$(find "${inputs[@]}" -newer "$out" -print -quit)" ]; then
  exit 0
fi
echo "== policies/js: jco componentize -> $out"
# --bundle: ComponentizeJS evaluates one module, so src/policy.js and the logic.js it imports are
# bundled first (the WIT import coordinosaur:policy/log stays external; rolldown says so).
# --disable all: no WASI clocks, random, stdio or http in the engine (the daemon grants none).
# Written to a temporary name and renamed: a reader never sees half a component.
node_modules/.bin/jco componentize src/policy.js --bundle --wit ../../wit --world-name policy \
  --disable all --out "$out.tmp"
mv "$out.tmp" "$out"
