#!/usr/bin/env bash
# Fine stage on CPU against CUDA, for a machine with an NVIDIA GPU (about 4 minutes on an H200):
# the CUDA tests (the CPU's answer on synthetic and on real candidates), then a Corel-1k classifier
# of one epoch (quick: the fine stage's timing hardly depends on its accuracy), its attention head and index,
# then benchmark_fine at 100, 1,000 and 4,000 candidates on each device, and on CUDA with larger
# verification blocks (VERIFY_BLOCK_SIZE 256 and 1,024); then query local features of photos of
# sizes never seen before (scripts/gpu_query_sizes.py); last, the default method end to end (evaluate on
# the validation queries: global features, coarse search, the query's crops and the fine stage) on each
# device. Prints the figures; writes
# the JSON reports under $OUT (or var/gpu-benchmark), its model and index under GPU_BENCHMARK_DATA
# (default: data/ beside them).
#
# RETRIEVAL_PYTHON: an interpreter that already has the requirements and a CUDA build of torch
# (a machine without the registry); without it, scripts/bootstrap.sh makes the venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${RETRIEVAL_PYTHON:-}" ]]; then
  PY="$RETRIEVAL_PYTHON"
else
  source "$ROOT/scripts/bootstrap.sh"
  PY="$VENV/bin/python"
fi
cd "$ROOT"
DEST="${OUT:-$ROOT/var/gpu-benchmark}"
mkdir -p "$DEST"
# the attention head at its default 30 epochs (seconds on a GPU): after 5 it was still at chance, so
# nearly no query verified and each then also paid the quarter turns (rank_turning)
export RETRIEVAL_DATA_DIR="${GPU_BENCHMARK_DATA:-$DEST/data}" RETRIEVAL_EPOCHS=1
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA:', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# a failing comparison is reported, and the timings still run
"$PY" -m pytest -q -p no:cacheprovider tests/fast/test_matching.py tests/test_local_and_verification.py \
  -k cuda -rs || echo "CUDA TESTS FAILED"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "CPU cores: $(nproc)"
SECONDS=0
RETRIEVAL_DEVICE=cuda "$PY" manage.py prepare_collection --skip-checks --preset corel1k
echo "prepare_collection on cuda (train, attention head, index with local features): ${SECONDS} s"
for device in cpu cuda; do
  echo "== $device"
  "$PY" manage.py benchmark_fine --skip-checks --device "$device" --counts 100,1000,4000 --limit 20 \
    --out "$DEST/benchmark_fine-$device.json"
done
for block in 256 1024; do  # larger blocks than the default 64 (the pre-score's: four times as many)
  echo "== cuda, VERIFY_BLOCK_SIZE=$block"
  RETRIEVAL_VERIFY_BLOCK_SIZE=$block "$PY" manage.py benchmark_fine --skip-checks --device cuda \
    --counts 1000,4000 --limit 20 --out "$DEST/benchmark_fine-cuda-block$block.json"
done
echo "== query local features of photos of new sizes"
"$PY" scripts/gpu_query_sizes.py cuda
echo "== the default method end to end (evaluate, the validation queries)"
for device in cpu cuda; do
  echo "-- $device"
  "$PY" manage.py evaluate --skip-checks --device "$device" --methods hybrid+attention --no-baseline \
    --out "$DEST/evaluate-$device.json"
  "$PY" -c "import json, sys; m = json.load(open(sys.argv[1]))['methods'][0]
print('  where the ms go: ' + ', '.join(f'{k} {v:.1f}' for k, v in m['stage_ms'].items()))" "$DEST/evaluate-$device.json"
done
