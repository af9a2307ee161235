#!/usr/bin/env bash
# Exact BiLRP of a ResNet-50 pair at 224 x 224 on a CUDA machine, in about 5 minutes: the engine (patch-major: one
# second-order pass per patch) against the h-pass unit-major path (a unit subset, extrapolated to h = 2048), the
# naive per-unit Zennit loop (a subset, extrapolated) and the floor of min(h, P) plain vector-Jacobian products,
# for 32- and 16-pixel patches (P = 49 and 196). Writes results.csv and results.json per setting under
# ${OUT_DIR:-benchmarks/results/gpu}/resnet50_224_p<patch>/ and prints the tables.
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
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
for PATCH in 32 16; do
    # each setting gets at most 140 s, so that both fit in 5 minutes
    timeout 140 "$PYTHON" benchmarks/speed.py --model resnet50 --device "$DEVICE" --size 224 224 --patch "$PATCH" \
        $FLAGS --out "$OUT_DIR/resnet50_224_p$PATCH" || echo "resnet50 patch $PATCH: failed or timed out (status $?)"
done
