#!/usr/bin/env bash
# Training on a lent GPU in one device call (run from the repository root; about 10 minutes at most):
#   bash scripts/device_wheels.sh                      # here, once: the wheels the GPU image lacks into .whl/
#   speechnorm data --pack .cache/pack                 # here: the corpus pack (<= 30 MiB)
#   device run, carry [".whl", ".cache/pack"]:  bash scripts/device_train.sh
# 1. installs soundfile, cffi, pycparser and soxr from .whl/ when they are missing (the GPU image has
#    torch, torchaudio, lightning, torchmetrics, scipy, matplotlib; nothing can be fetched there);
# 2. python -m speechnorm.device_loop: decodes the pack onto the GPU, builds the room bank there,
#    trains for BUDGET seconds of wall clock, validates, writes model.ckpt, curve.csv/png,
#    summary.json and log.txt under OUT (default $OUT, the device tool's returned folder).
# Settings by environment: BUDGET (s, default 480), BATCH (32), ITEM_SECONDS (3), BANK_ROOMS (20000),
# PACK (.cache/pack), BANK_DIR (.cache/room_bank_N, outside OUT: a bank is GBs), INIT_FROM (models/tac_gru_online_small_v2; "" starts from scratch), SIZE (small),
# DEVICE (cuda when there is one). The test suite runs it on the CPU with a tiny budget (its dry run).
set -euo pipefail
OUT=${OUT:-runs/device_train}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ! $PY -c "import soundfile, soxr" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "device_train: soundfile/soxr missing and no wheels in .whl/ (run scripts/device_wheels.sh here and carry .whl)"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt" || true
INIT=${INIT_FROM-models/tac_gru_online_small_v2}
ARGS=(--pack "${PACK:-.cache/pack}" --out "$OUT" --budget "${BUDGET:-480}" --batch "${BATCH:-32}"
      --seconds "${ITEM_SECONDS:-3}" --bank-rooms "${BANK_ROOMS:-20000}" --size "${SIZE:-small}")
[ -n "$INIT" ] && ARGS+=(--init-from "$INIT")
[ -n "${DEVICE:-}" ] && ARGS+=(--device "$DEVICE")
[ -n "${BANK_DIR:-}" ] && ARGS+=(--bank-dir "$BANK_DIR")
[ -n "${VAL_EVERY:-}" ] && ARGS+=(--val-every "$VAL_EVERY")
[ -n "${VAL_BATCHES:-}" ] && ARGS+=(--val-batches "$VAL_BATCHES")
set -o pipefail
$PY -m speechnorm.device_loop "${ARGS[@]}" 2>&1 | tee -a "$OUT/stdout.txt"
