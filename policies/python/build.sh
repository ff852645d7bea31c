#!/usr/bin/env bash
# Builds policy.wasm from app.py + logic.py with componentize-py, against the daemon's WIT world
# in ../../wit. Installs the pinned toolchain first into .venv (python3 -m venv; pip from PyPI,
# requirements.txt) when it is missing or older than requirements.txt. Skips the build when
# policy.wasm is newer than every input. Needs python3 >= 3.10 with the venv module.
# Called by scripts/test.sh and by the tests' helper (tests/common/policies.rs).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/componentize-py ] || [ requirements.txt -nt .venv/installed ]; then
  echo "== policies/python: componentize-py into .venv (requirements.txt)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  touch .venv/installed
fi

out=policy.wasm
inputs=(app.py logic.py ../../wit/policy.wit requirements.txt build.sh)
if [ -f "$out" ] && [ -z "$(find "${inputs[@]}" -newer "$out" -print -quit)" ]; then
  exit 0
fi
echo "== policies/python: componentize-py -> $out"
# Written to a temporary name and renamed: a reader never sees half a component.
.venv/bin/componentize-py --wit-path ../../wit --world policy componentize app -o "$out.tmp"
mv "$out.tmp" "$out"
