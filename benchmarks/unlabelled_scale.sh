#!/usr/bin/env bash
# Time to the first training step and memory (main process, each worker) against the size of
# the unlabelled pool: folder datasets of SIZES entries (hard links, 100 sub-folders), for each
# data.num_workers value, a cold scan and a cached index. Markdown table on stdout, JSON with
# --json FILE. Sizes, workers and the work folder are parameters:
#   bash benchmarks/unlabelled_scale.sh --sizes 1000,10000,100000,1000000 --workers 0,4 \
#     --work /tmp/dualteacher_scale --json unlabelled_scale.json
set -euo pipefail
PYTHON=${PYTHON:-python}
exec "$PYTHON" "$(dirname "$0")/unlabelled_scale.py" "$@"
