#!/usr/bin/env bash
# Train the same model with every normalizer at batch sizes 1 and 8 (identical data, seeds, steps).
# Each run tests its checkpoint on the seen and unseen-array test splits when it ends (pass
# `--test false` to leave that to scripts/ablation_report.py, which evaluates every run the same way).
# Logs and checkpoints land in runs/norm_ablation/<norm>_b<batch>/version_*/.
set -euo pipefail
cd "$(dirname "$0")/../.."
NORMS=${NORMS:-"online batch layer group rms streaming_lp none"}
BATCHES=${BATCHES:-"1 8"}
for norm in $NORMS; do
  for batch in $BATCHES; do
    .venv/bin/speechnorm train --config recipes/norm_ablation/conf.yaml \
      --model.norm "$norm" --data.batch_size "$batch" --trainer.logger.init_args.name "${norm}_b${batch}" "$@"
  done
done
