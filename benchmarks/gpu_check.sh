#!/usr/bin/env bash
# The GPU check: every verb on one CUDA GPU without network, one JSON of results
# ($OUT/gpu_check.json when $OUT is set, else --out FILE) and a short table. About 7 minutes.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # once, on a machine with network: .whl/
#   bash benchmarks/gpu_check.sh [--out FILE]    # on the GPU machine (carry .whl/ along)
#   bash benchmarks/gpu_check.sh --cpu --out r.json   # tiny CPU mode (the test suite runs it)
#
# Wheels in $GPU_CHECK_WHEELS (default: .whl/ in the checkout) are installed first, offline,
# for the packages the GPU machine's Python lacks (benchmarks/fetch_gpu_wheels.sh says which).
# The package itself runs from src/ (no install). What runs: benchmarks/gpu_check.py.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-$repo/.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  site=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl || { echo "gpu_check: installing $wheels failed" >&2; exit 3; }
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$repo/src${PYTHONPATH:+:$PYTHONPATH}
# Nothing may be downloaded: fail fast instead of waiting on a network that is not there.
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" "$repo/benchmarks/gpu_check.py" "$@"
