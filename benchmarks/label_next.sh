#!/usr/bin/env bash
# Label next: does labelling the K images `dualteacher suggest` picks beat labelling K random
# ones? On the demo data (written to disk by `dualteacher demo-data`, which keeps the true
# masks of the unlabelled images in unlabeled_masks/), for each seed:
#   1. train Dual Teacher on the demo config (base);
#   2. `dualteacher suggest` ranks the unlabelled images with base's final checkpoint;
#   3. K more labels: the top K of the ranking (suggest) or K drawn with the seed (random),
#      added with their true masks through split files (data.labeled / data.unlabeled);
#   4. retrain each from scratch with the same config, seed and steps; compare final mIoU.
# Writes $OUT/label_next.md (and .json), one row per seed and mean ± std, whichever way it
# comes out. Running it again resumes / reuses finished runs.
#
#   bash benchmarks/label_next.sh [config overrides key=value ...]
#   K=24 STEPS=600 SEEDS="0 1 2" CONFIG=demo OUT=runs/label_next bash benchmarks/label_next.sh
# Overrides apply to the data written (data.demo.*) and to every training run.
set -euo pipefail
DT=${DT:-dualteacher}
PY=${PY:-python}
K=${K:-24}
STEPS=${STEPS:-600}
SEEDS=${SEEDS:-"0 1 2"}
CONFIG=${CONFIG:-demo}
OUT=${OUT:-runs/label_next}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DATA=$OUT/data

$DT demo-data --config "$CONFIG" --out "$DATA" "$@"
common=(data.name=folder "data.root=$DATA" "train.steps=$STEPS" "$@")
for seed in $SEEDS; do
  run=$OUT/seed$seed
  $DT train "$CONFIG" "${common[@]}" "train.seed=$seed" --out "$run/base"
  $DT suggest "$run/base/latest.pt" --top "$K" --out "$run/suggestions"
  $PY "$HERE/label_next.py" splits --data "$DATA" --k "$K" \
    --ranking "$run/suggestions/ranking.csv" --out "$run/splits_suggest"
  $PY "$HERE/label_next.py" splits --data "$DATA" --k "$K" --random "$seed" \
    --out "$run/splits_random"
  for arm in suggest random; do
    $DT train "$CONFIG" "${common[@]}" "train.seed=$seed" \
      "data.labeled=$run/splits_$arm/labeled.txt" "data.unlabeled=$run/splits_$arm/unlabeled.txt" \
      --out "$run/$arm"
  done
done
# shellcheck disable=SC2086
$PY "$HERE/label_next.py" table --out "$OUT" --k "$K" --seeds $SEEDS \
  --note "Config \`$CONFIG\` on its demo data in the folder layout, $STEPS steps per run, overrides: ${*:-none}. \`bash benchmarks/label_next.sh\` (K=$K)."
