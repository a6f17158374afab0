#!/usr/bin/env bash
# Train the same model with every normalizer at batch sizes 1 and 8, over several seeds: identical
# data (every run draws the same items: the data seed is fixed), steps and schedule; the seed
# changes only the initial weights and the order of training items.
#   recipes/norm_ablation/run.sh                               # everything (7 kinds x 2 batch x 3 seeds)
#   NORMS="online batch" BATCHES=8 SEEDS="0 1 2" recipes/norm_ablation/run.sh
#   NORMS="online(alpha_fwd=0.99)" recipes/norm_ablation/run.sh # a setting of one kind
#   ROOT=runs/norm_ablation_1500 STEPS=1500 recipes/norm_ablation/run.sh   # a longer sweep, apart
# Runs land in $ROOT/<name>_b<batch>_s<seed>/ (ROOT defaults to runs/norm_ablation) (a setting's name spells its options:
# online(alpha_fwd=0.99) -> online-alpha_fwd0.99). A finished run (its DONE file) is
# skipped, so the script resumes a sweep. Runs leave testing to scripts/ablation_report.py, which
# scores every run on the same clips by one code path.
set -euo pipefail
cd "$(dirname "$0")/../.."
NORMS=${NORMS:-"online batch layer group rms streaming_lp none"}
BATCHES=${BATCHES:-"8 1"}
SEEDS=${SEEDS:-"0 1 2"}
SPEECHNORM=${SPEECHNORM:-.venv/bin/speechnorm}
ROOT=${ROOT:-runs/norm_ablation}
STEPS=${STEPS:-600}
run_name() {  # online(alpha_fwd=0.99, ecm='ac') -> online-alpha_fwd0.99-ecmac
  echo "$1" | sed -e 's/[()]/ /g' -e "s/[=,' \"]\+/ /g" | awk '{n=$1; for (i=2; i<=NF; i+=2) n=n "-" $i $(i+1); print n}'
}
for seed in $SEEDS; do
  for batch in $BATCHES; do
    for norm in $NORMS; do
      name="$(run_name "$norm")_b${batch}_s${seed}"
      if [ -e "$ROOT/$name/DONE" ]; then
        echo "== $name: done, skipped"; continue
      fi
      echo "== $name"
      "$SPEECHNORM" train --config recipes/norm_ablation/conf.yaml --seed_everything "$seed" \
        --model.norm "$norm" --data.batch_size "$batch" --trainer.logger.init_args.name "$name" --trainer.logger.init_args.save_dir "$ROOT" \
        --trainer.default_root_dir "$ROOT" --trainer.max_steps "$STEPS" --test false "$@"
      touch "$ROOT/$name/DONE"
    done
  done
done
