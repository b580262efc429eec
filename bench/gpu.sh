#!/usr/bin/env bash
# The prepared GPU run (a few minutes on one GPU): CUDA conformance of the torch model against the
# float64 oracle (float32 and bfloat16 autocast), the trainer's conformance under CUDA in float32
# (`effv2 check --train-steps` runs on CPU; this part trains on the GPU against the oracle's tolerance
# for float32), V2-S training images/s at 224 (bfloat16, channels-last, eager and compiled)
# against timm's tf_efficientnetv2_s, and the real loader against synthetic on-device data. Record the
# printed figures in bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" bench/gpu.py --device cuda --spec efficientnetv2-s --check-size 64 --size 224 --batch 64 --steps 20 --json
"$PY" -m effv2_cli train efficientnetv2-nano --framework torch --device cuda --steps 60 \
    --out "$(mktemp -d)/run" --json | tail -n 5
# the real loader (JPEG files, crop of the original, RandAugment M15 x 2, 8 worker processes) against a
# synthetic batch already on the device: V2-S training images/s, goal loader / synthetic >= 0.9
"$PY" bench/gpu_loader.py --device cuda --spec efficientnetv2-s --size 224 --batch 64 --steps 30 --workers 8 --json
