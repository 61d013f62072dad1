#!/usr/bin/env bash
# The gain suite: seven real-pixel datasets of different character (folder layout, true masks of
# the unlabelled images kept aside), supervised (2x the steps: its plateau) vs. Dual Teacher,
# several seeds, one table. See benchmarks/gain_suite.py; settings are chosen on --split tuning
# only, --split heldout reports them.
#   bash benchmarks/gain_suite.sh --split tuning [--seeds 3] [--jobs 2] [--out runs/gain_suite]
#        [--datasets shapes,gray,...] [--steps-sup 2400 --steps-dt 1200] [key=value ...]
#   bash benchmarks/gain_suite.sh diagnose RUN_DIR_OR_CKPT --truth OUT/data/<name>_draw<seed>/truth
# Training runs one thread per run; with --jobs 2 on 2 cores keep the machine otherwise quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" benchmarks/gain_suite.py "$@"
