#!/usr/bin/env bash
# Do unlabelled images pay? Every method, several seeds, equal steps (to convergence) and equal
# wall-clock (steps from a quiet timing phase), one folder. See benchmarks/ssl_gain.py.
#   bash benchmarks/ssl_gain.sh [--config demo] [--steps 1200] [--seeds 3] [--out runs/ssl_gain] [key=value ...]
# Only the first minute (one `dualteacher bench --data` per method) needs a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" benchmarks/ssl_gain.py "$@"
