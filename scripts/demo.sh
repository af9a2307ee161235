#!/usr/bin/env bash
# Set up (first run only) and run the offline demo; writes bilrp_demo.png (or the path given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/zennit-bilrp demo --out "${1:-bilrp_demo.png}"
