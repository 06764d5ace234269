#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine, idempotently:
# a virtual environment with requirements.txt, or with the file RETRIEVAL_REQUIREMENTS
# names (scripts/test.sh: requirements-test.txt), kept outside the checkout and keyed by
# the requirements' hash, so clones share it; and a running Redis.
# Source it: it exports VENV and puts the venv first on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$ROOT/${RETRIEVAL_REQUIREMENTS:-requirements.txt}"
req_hash="$(cat "$ROOT/requirements.txt" "$REQUIREMENTS" | sha256sum | cut -c1-12)"
VENV="${RETRIEVAL_VENV:-$HOME/.cache/image-retrieval/venv-$req_hash}"

if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
  echo "bootstrap: creating $VENV (first run installs torch; a few minutes)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  log="$(dirname "$VENV")/pip-install.log"
  if ! "$VENV/bin/pip" install --disable-pip-version-check -r "$REQUIREMENTS" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "bootstrap: pip install failed; full log in $log" >&2
    exit 1
  fi
  touch "$VENV/.complete"
fi
export VENV
export PATH="$VENV/bin:$PATH"

# Redis is the Celery broker; start a local one when none answers.
REDIS_PORT="${REDIS_PORT:-6379}"
if command -v redis-cli >/dev/null && ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null; then
    echo "bootstrap: starting redis-server on 127.0.0.1:$REDIS_PORT" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
fi
