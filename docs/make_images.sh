#!/usr/bin/env bash
# Regenerates the example images of the README (docs/images/) from a short demo-data run.
# CPU only; about 10 minutes on an idle 2-core machine (much longer on a busy one).
#   bash docs/make_images.sh [WORK_DIR]      (default WORK_DIR: runs/docs)
# Set DT to run another dualteacher, e.g. DT="python -m dualteacher".
set -euo pipefail
DT=${DT:-dualteacher}
W=${1:-runs/docs}
IMAGES=$(dirname "$0")/images
mkdir -p "$W" "$IMAGES"

# A short comparison on the demo data: batch 4, 200 steps. Epochs of 20 steps (instead of one
# pass over the 24 labelled images, 6 steps) so that the teachers' shifts are wide enough to
# see in curves.png.
$DT compare demo --methods supervised,dual_teacher --steps 200 data.batch_size=4 \
    data.demo.num_val=48 train.epoch_steps=20 train.log_every=4 train.eval_every=40 \
    train.progress=false --out "$W/cmp"

# Evaluation report of the Dual Teacher student and teachers, 4 sample images.
$DT eval "$W/cmp/dual_teacher/best.pt" --models all --report "$W/report" --samples 4

# A new demo scene of another size (176 x 132) than the 64 px training images, predicted.
python - "$W/scene.png" <<'PY'
import sys

import numpy as np
from PIL import Image

from dualteacher.data.demo import render_image

image, _ = render_image(np.random.default_rng(2024), 176)
Image.fromarray(image[22:154]).save(sys.argv[1])
PY
$DT predict "$W/cmp/dual_teacher/best.pt" "$W/scene.png" --out "$W/pred"

# Which unlabelled images to label next: the top 4 of the Dual Teacher checkpoint's ranking.
$DT suggest "$W/cmp/dual_teacher/best.pt" --top 4 --out "$W/suggest"

cp "$W/cmp/miou_vs_time.png" "$IMAGES/compare_miou_vs_time.png"
cp "$W/cmp/dual_teacher/curves.png" "$IMAGES/curves.png"
cp "$W/report/confusion.png" "$IMAGES/report_confusion.png"
cp "$W/report/samples.png" "$IMAGES/report_samples.png"
cp "$W/scene.png" "$IMAGES/predict_input.png"
cp "$W/pred/scene.png" "$IMAGES/predict_index.png"
cp "$W/pred/scene_overlay.png" "$IMAGES/predict_overlay.png"
cp "$W/suggest/contact_sheet.png" "$IMAGES/suggest_contact_sheet.png"
ls -l "$IMAGES"
