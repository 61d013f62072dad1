#!/usr/bin/env bash
# Step time and per-phase breakdown of every method on the demo config (same model, batch,
# crop), one JSON line per method; issue 7's dual_teacher / unimatch ratio comes from these.
#   bash benchmarks/methods_on_demo.sh [extra bench options, e.g. --threads 2] > methods.jsonl
set -euo pipefail
DT=${DT:-dualteacher}
for method in supervised mean_teacher fixmatch unimatch dual_teacher; do
  $DT bench --config demo --method "$method" --steps 10 --warmup 2 --json "$@"
done
