#!/usr/bin/env bash
# The main job on a fresh machine: set up, index the demo collection (Corel-1k
# unless a folder is named) with the ImageNet backbone, run a sample search, then
# serve the site within minutes: migrations, two Celery workers (searches,
# maintenance) in the background and gunicorn on http://127.0.0.1:8000 (PORT to
# change it; Ctrl-C stops both). Meanwhile the maintenance worker fine-tunes the
# classifier and trains the attention head (tens of minutes on 2 cores; progress
# below and on the staff page), then the trained model and its index swap in.
# Steps already done (a model, an index) are reused; delete var/ to start over.
# The evaluation is its own command: python manage.py evaluate --queries val
# Broker: the local Redis (bootstrap starts redis-server when installed),
# otherwise Kombu's filesystem transport under var/broker/.
#   bash scripts/demo.sh                       # Corel-1k from ../shared/datasets
#   bash scripts/demo.sh /photos labels.csv    # any folder; labels: CSV, 'folders' or 'none'
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
manage() { "$VENV/bin/python" manage.py "$@"; }

COLLECTION="${1:-${RETRIEVAL_COLLECTION_DIR:-$ROOT/../shared/datasets/corel1k/images}}"
DATA_DIR="${RETRIEVAL_DATA_DIR:-$ROOT/var}"
export RETRIEVAL_COLLECTION_DIR="$COLLECTION"
if [ -z "${1:-}" ] && [ -z "${2:-}" ]; then
  LABELS="$DATA_DIR/corel1k-labels.csv"   # written by --preset corel1k
  LABEL_ARGS=(--preset corel1k)
else
  LABELS="${2:-folders}"
  LABEL_ARGS=(--labels "$LABELS")
fi

manage prepare_collection --site-first --collection "$COLLECTION" "${LABEL_ARGS[@]}"
manage make_thumbnails
first_image="$(find -L "$COLLECTION" -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort | sed -n 1p)"  # sed reads it all: head would make sort die of SIGPIPE on a large collection (pipefail)
echo "sample search with $first_image:"
manage search "$first_image"

# The site. Site-started reindexes keep these labels.
export COLLECTION_LABELS="${COLLECTION_LABELS:-$LABELS}"
case "$COLLECTION_LABELS" in folders|none|/*) ;; *) COLLECTION_LABELS="$(cd "$(dirname "$COLLECTION_LABELS")" && pwd)/$(basename "$COLLECTION_LABELS")";; esac
if [ -z "${CELERY_BROKER_URL:-}" ]; then
  if command -v redis-cli >/dev/null && redis-cli -p "${REDIS_PORT:-6379}" ping >/dev/null 2>&1; then
    export CELERY_BROKER_URL="redis://127.0.0.1:${REDIS_PORT:-6379}/0"
  else
    export CELERY_BROKER_URL="filesystem://"
  fi
fi
echo "broker: $CELERY_BROKER_URL"
manage migrate --noinput
mkdir -p "$DATA_DIR/logs"
# Two workers, so that a search never waits behind a reindex or retrain: one takes the search
# queue, the other the maintenance queue, on one torch thread: two processes of two threads each
# on two cores ran 5-11x slower each (RESULTS.md, "Two workers on two cores").
"$VENV/bin/celery" -A workers worker -Q "${CELERY_TASK_DEFAULT_QUEUE:-search}" -n "search@%h" --pool=solo \
  --concurrency=1 --loglevel=INFO >"$DATA_DIR/logs/celery-search.log" 2>&1 &
SEARCH_PID=$!
OMP_NUM_THREADS="${MAINTENANCE_THREADS:-1}" "$VENV/bin/celery" -A workers worker -Q "${CELERY_MAINTENANCE_QUEUE:-maintenance}" -n "maintenance@%h" \
  --pool=solo --concurrency=1 --loglevel=INFO >"$DATA_DIR/logs/celery-maintenance.log" 2>&1 &
MAINTENANCE_PID=$!
trap 'kill "$SEARCH_PID" "$MAINTENANCE_PID" 2>/dev/null; wait "$SEARCH_PID" "$MAINTENANCE_PID" 2>/dev/null' EXIT
echo "Celery workers started: searches (pid $SEARCH_PID, log $DATA_DIR/logs/celery-search.log)," \
  "maintenance (pid $MAINTENANCE_PID, log $DATA_DIR/logs/celery-maintenance.log)"
echo "staff pages: create an account with: $VENV/bin/python manage.py createsuperuser"
# the real training, on the maintenance worker, only while the classifier is the ImageNet starter;
# its progress is printed here while the site serves
manage start_training --follow --every 60 &
FOLLOW_PID=$!
# On exit the search worker finishes its search (SIGTERM, a warm shutdown); the maintenance worker
# stops at once (SIGQUIT, a cold one) instead of finishing a training of tens of minutes: the next
# start fails that run (its heartbeat stopped) and queues the training again.
trap 'kill "$SEARCH_PID" "$FOLLOW_PID" 2>/dev/null; kill -QUIT "$MAINTENANCE_PID" 2>/dev/null; wait "$SEARCH_PID" "$MAINTENANCE_PID" 2>/dev/null' EXIT
echo "serving the site at http://127.0.0.1:${PORT:-8000}/"
# gunicorn, not Django's development server (whose listen queue of 10 drops connections under
# load): two processes of four threads; the views only queue work, the worker does it.
"$VENV/bin/gunicorn" retrieval_site.wsgi --bind "127.0.0.1:${PORT:-8000}" --workers 2 --threads 4 \
  --timeout 120 --access-logfile "$DATA_DIR/logs/web-access.log"
