#!/usr/bin/env bash
# The whole test suite: sets up what it needs, then runs pytest (the fast tier,
# the tests on a tiny trained model, the web tests and the slow group marked
# "slow"). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh tests/fast      # the fast tier: under a minute, no model, no services
#   bash scripts/test.sh -m "not slow"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RETRIEVAL_REQUIREMENTS=requirements-test.txt  # the runtime's and the tests' (pytest, playwright, ...)
# Installed before bootstrap.sh runs, so that it can start the Redis installed here.
# The browser tests drive Debian's Chromium (never a downloaded browser).
# docker-compose (v1, Python) validates docker-compose.yml without a Docker engine.
MISSING=()
[ -x /usr/bin/chromium ] || MISSING+=(chromium chromium-driver)
command -v docker-compose >/dev/null || MISSING+=(docker-compose)
command -v dockerd >/dev/null || MISSING+=(docker.io)  # the container test builds and runs the image
command -v debootstrap >/dev/null || MISSING+=(debootstrap)
# The web tests need a real Redis broker, which bootstrap.sh starts when it is installed.
command -v redis-server >/dev/null || MISSING+=(redis-server)
if [ "${#MISSING[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  echo "test.sh: installing ${MISSING[*]} (apt-get)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null \
    || echo "test.sh: could not install ${MISSING[*]}; the tests needing them will be skipped" >&2
fi
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# The compose test (tests/web/test_compose.py) runs docker-compose.yml's services on the local
# PostgreSQL; start it when it is installed but not running (it is skipped when there is none).
if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -q && command -v pg_ctlcluster >/dev/null; then
  echo "test.sh: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start \
    || echo "test.sh: could not start PostgreSQL; the compose test will be skipped" >&2
fi
# The container test (tests/web/test_container.py) builds and runs the image: start the Docker
# engine when it is installed but not running (the test is skipped when none answers).
if command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "test.sh: starting dockerd" >&2
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
# The web tests start their own Celery worker (tests/web/conftest.py) on the Redis bootstrap started.
exec "$VENV/bin/python" -m pytest "$@"
