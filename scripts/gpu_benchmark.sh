#!/usr/bin/env bash
# Fine stage on CPU against CUDA, for a machine with an NVIDIA GPU (about 10 minutes there):
# the CUDA matching test, then a one-epoch Corel-1k model and index (quick: the timing does not
# depend on how well the model is trained), then benchmark_fine at 1,000 and 4,000 candidates
# on each device. Prints the figures; writes the JSON reports under $OUT (or var/gpu-benchmark).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
DEST="${OUT:-$ROOT/var/gpu-benchmark}"
mkdir -p "$DEST"
export RETRIEVAL_DATA_DIR="$DEST/data" RETRIEVAL_EPOCHS=1 RETRIEVAL_ATTENTION_EPOCHS=5
"$VENV/bin/python" -c "import torch; print('CUDA:', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/fast/test_matching.py -k cuda -rs
RETRIEVAL_DEVICE=cuda "$VENV/bin/python" manage.py prepare_collection --preset corel1k
for device in cpu cuda; do
  echo "== $device"
  "$VENV/bin/python" manage.py benchmark_fine --device "$device" --counts 1000,4000 --limit 20 \
    --out "$DEST/benchmark_fine-$device.json"
done
