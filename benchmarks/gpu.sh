#!/usr/bin/env bash
# Exact BiLRP on a CUDA machine, in about 9 minutes:
# - a ResNet-50 pair at 224 x 224: the engine (patch-major: one second-order pass per patch) against the h-pass
#   unit-major path (a unit subset, extrapolated to h = 2048), the naive per-unit Zennit loop (a subset, extrapolated)
#   and the floor of min(h, P) plain vector-Jacobian products, for 32- and 16-pixel patches (P = 49 and 196);
#   results.csv and results.json per setting under ${OUT_DIR:-benchmarks/results/gpu}/resnet50_224_p<patch>/;
# - vision transformers (benchmarks/vision_speed.py): a ViT-B/16 image pair at 224 x 224 (P = 196, h = 768) and a
#   CLIP ViT-B/32 image-caption pair, both rule families, against their min(h, P) plain-VJP floors; one JSON per
#   setting and family, results.csv and table.md under $OUT_DIR/vision_cost/.
#
# Usage: bash benchmarks/gpu.sh             (PYTHON=... to choose the interpreter, DEVICE=cpu for a dry run)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
DEVICE=${DEVICE:-cuda}
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu}
# flags shared by both settings (tests/test_benchmarks.py runs speed.py with exactly these on a tiny model)
FLAGS="--no-estimators --repeats 2 --chunks --unit-subset 256 --naive-units 32 --memory-budget 17179869184 --no-plot"
# flags of the vision-transformer settings (tests/test_benchmarks.py runs vision_speed.py with these on tiny models)
VISION_FLAGS="--repeats 5 --unit-subset 64 --memory-budget 17179869184"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
for PATCH in 32 16; do
    # each setting gets at most 140 s, so that both fit in 5 minutes
    timeout 140 "$PYTHON" benchmarks/speed.py --model resnet50 --device "$DEVICE" --size 224 224 --patch "$PATCH" \
        $FLAGS --out "$OUT_DIR/resnet50_224_p$PATCH" || echo "resnet50 patch $PATCH: failed or timed out (status $?)"
done
for SETTING in vit_b16 clip_b32; do
    # each vision setting (both rule families) gets at most 120 s
    timeout 120 "$PYTHON" benchmarks/vision_speed.py --setting "$SETTING" --device "$DEVICE" $VISION_FLAGS \
        --out "$OUT_DIR/vision_cost" || echo "$SETTING: failed or timed out (status $?)"
done
