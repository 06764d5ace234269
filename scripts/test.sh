#!/usr/bin/env bash
# The whole test suite: sets up what it needs, then runs pytest (fast tests
# and the slow group marked "slow"). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# The browser tests drive Debian's Chromium (never a downloaded browser).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  echo "test.sh: installing chromium and chromium-driver (apt-get)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "test.sh: could not install chromium; the browser tests will be skipped" >&2
fi
# The web tests start their own Celery worker (tests/web/conftest.py) on the Redis bootstrap started.
exec "$VENV/bin/python" -m pytest "$@"
