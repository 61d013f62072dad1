#!/usr/bin/env bash
# One round of the label-next loop, measured: suggest -> annotate in a tool -> import ->
# continue training. On the demo data (written by `dualteacher demo-data`, which keeps the true
# masks of the unlabelled images in unlabeled_masks/; they stand in for the person), per seed:
#   1. base: Dual Teacher on the demo config, 24 labels (label_next.sh's base run, the same
#      folder: with the same OUT, one script reuses the other's);
#   2. `dualteacher suggest` ranks the unlabelled images with base's final checkpoint and
#      writes the top K as Label Studio pre-annotations (--format labelstudio);
#   3. `label_next.py annotate` replaces each pre-annotated mask with the true one and writes
#      Label Studio's export (the project's writer), with the labels base had and the
#      validation set, as a data.name=labelstudio root (the rest of the pool unlabelled); the
#      same for K images drawn with the seed; each read back and checked against the truth;
#   4. three runs on those roots, the same config, seed and steps:
#      continue_suggest  --init-from base's final checkpoint, the K suggested added;
#      continue_random   --init-from base's final checkpoint, the K random added;
#      scratch_suggest   from the config's usual weights, the same labels as continue_suggest.
# Writes $OUT/label_loop.md (and .json): final student mIoU per seed and arm, mean ± std, and
# continue_suggest - continue_random, continue_suggest - scratch_suggest paired by seed with
# 95 % Student-t intervals. Running it again resumes / reuses finished runs.
#
#   bash benchmarks/label_loop.sh [config overrides key=value ...]
#   K=24 STEPS=600 SEEDS="0 1 2" CONFIG=demo OUT=runs/label_next FROM=latest \
#     bash benchmarks/label_loop.sh
# Overrides apply to the data written (data.demo.*) and to every training run. FROM picks
# base's checkpoint that suggest ranks with and the continued runs start from: latest (the
# final one, default) or best. best.pt is chosen on the validation set unless data.select is
# set, so starting from it would let the reported set pick the start of the continued arms.
set -euo pipefail
DT=${DT:-dualteacher}
PY=${PY:-python}
K=${K:-24}
STEPS=${STEPS:-600}
SEEDS=${SEEDS:-"0 1 2"}
CONFIG=${CONFIG:-demo}
OUT=${OUT:-runs/label_next}
FROM=${FROM:-latest}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DATA=$OUT/data
# How Label Studio names a file of its local storage; annotate resolves it as the reader does.
PREFIX='/data/local-files/?d=images/'

$DT demo-data --config "$CONFIG" --out "$DATA" "$@"
for seed in $SEEDS; do
  run=$OUT/seed$seed
  $DT train "$CONFIG" data.name=folder "data.root=$DATA" "train.steps=$STEPS" "$@" \
    "train.seed=$seed" --out "$run/base"
  start=$run/base/$FROM.pt
  $DT suggest "$start" --top "$K" --format labelstudio --image-prefix "$PREFIX" \
    --out "$run/loop/suggestions"
  $PY "$HERE/label_next.py" annotate --data "$DATA" --k "$K" --config "$CONFIG" \
    --pre "$run/loop/suggestions/labelstudio.json" --out "$run/loop/data_suggest"
  $PY "$HERE/label_next.py" annotate --data "$DATA" --k "$K" --config "$CONFIG" \
    --random "$seed" --out "$run/loop/data_random"
  tool=(data.name=labelstudio "train.steps=$STEPS" "$@" "train.seed=$seed")
  $DT train "$CONFIG" "${tool[@]}" "data.root=$run/loop/data_suggest" --init-from "$start" \
    --out "$run/continue_suggest"
  $DT train "$CONFIG" "${tool[@]}" "data.root=$run/loop/data_random" --init-from "$start" \
    --out "$run/continue_random"
  $DT train "$CONFIG" "${tool[@]}" "data.root=$run/loop/data_suggest" --out "$run/scratch_suggest"
done
# shellcheck disable=SC2086
$PY "$HERE/label_next.py" loop-table --out "$OUT" --k "$K" --seeds $SEEDS \
  --note "Config \`$CONFIG\` on its demo data; base in the folder layout, the arms on its Label Studio export; $STEPS steps per run, continued from base's $FROM.pt, overrides: ${*:-none}. \`bash benchmarks/label_loop.sh\` (K=$K)."
