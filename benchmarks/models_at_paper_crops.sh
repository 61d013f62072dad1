#!/usr/bin/env bash
# Step time of supervised and dual_teacher for every paper model at the paper's crop
# (batch 2, synthetic data), one JSON line per run. Issue 3's table.
#   bash benchmarks/models_at_paper_crops.sh [extra bench options, e.g. --device cuda] > models.jsonl
set -euo pipefail
DT=${DT:-dualteacher}
while read -r model crop; do
  for method in supervised dual_teacher; do
    $DT bench --model "$model" --crop "$crop" --batch 2 --method "$method" --steps "${STEPS:-3}" --warmup 1 --json "$@"
  done
done <<'LIST'
deeplabv3plus-r101 321
deeplabv3plus-r101 513
segformer-b1 512
dpt-dinov2-s 518
dpt-dinov2-b 518
LIST
