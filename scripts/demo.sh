#!/usr/bin/env bash
# The main job on a fresh machine: set up, fine-tune the classifier on the
# demo collection (Corel-1k unless a folder is named), index it, evaluate
# it, and run a sample search. Steps already done (a trained model, an
# index) are reused; delete var/ to start over.
#   bash scripts/demo.sh                       # Corel-1k from ../shared/datasets
#   bash scripts/demo.sh /photos labels.csv    # any folder; labels: CSV or 'folders'
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
manage() { "$VENV/bin/python" manage.py "$@"; }

COLLECTION="${1:-${RETRIEVAL_COLLECTION_DIR:-$ROOT/../shared/datasets/corel1k/images}}"
DATA_DIR="${RETRIEVAL_DATA_DIR:-$ROOT/var}"
export RETRIEVAL_COLLECTION_DIR="$COLLECTION"
LABELS="${2:-}"
if [ -z "$LABELS" ]; then
  if [ -z "${1:-}" ]; then
    LABELS="$DATA_DIR/corel1k-labels.csv"
    [ -f "$LABELS" ] || manage make_labels "$COLLECTION" --preset corel1k --out "$LABELS"
  else
    LABELS=folders
  fi
fi

[ -f "$DATA_DIR/models/classifier.pt" ] || manage train --collection "$COLLECTION" --labels "$LABELS"
[ -e "$DATA_DIR/index/active" ] || manage index --collection "$COLLECTION" --labels "$LABELS"
manage evaluate --queries val
first_image="$(find -L "$COLLECTION" -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort | head -n 1)"
echo "sample search with $first_image:"
manage search "$first_image"
