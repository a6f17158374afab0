#!/usr/bin/env bash
# The GPU checks, as one call on a lent CUDA machine (the device tool; run from the repository root):
#   bash scripts/device_check.sh            # writes logs and tables under $OUT (default: runs/device)
# 1. every GPU test (Triton kernels against the float64 reference, the CUDA-graph training step);
# 2. scripts/bench_norm.py --device cuda (recipe shapes, fp32 + bf16, bandwidth, training steps);
# 3. the torch backend on the same GPU, for the Triton kernels' ratio;
# 4. training steps at batch 8 (the README's CPU table's shape) and the base size at batch 32.
# Each stage has its own time limit, so one that hangs leaves the others their time.
set -u
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - start))s"
  tail -n "${TAIL:-40}" "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
TAIL=25 stage pytest_gpu 210 $PY -m pytest -m gpu tests/gpu -q -p no:cacheprovider -n 8
TAIL=60 stage bench_norm_cuda 150 $PY scripts/bench_norm.py --device cuda
TAIL=30 stage bench_norm_cuda_torch 50 $PY scripts/bench_norm.py --device cuda --backend torch --no-reference --no-train-step --dtypes fp32
TAIL=12 stage bench_train_step_b8 50 $PY scripts/bench_train_step.py --device cuda --models tac_gru tac_crn --norms online batch layer none --batch 8 --cuda-graph
TAIL=12 stage bench_train_step_base_b32 50 $PY scripts/bench_train_step.py --device cuda --size base --models tac_gru tac_crn --norms online batch none --batch 32 --cuda-graph
