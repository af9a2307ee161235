#!/usr/bin/env bash
# Create .venv (if missing) and install zennit-bilrp with its test, demo and docs extras and the optional extras
# whose tests must run (pretrained weights, text models, vision transformers: timm, open_clip); again if setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.zennit-bilrp-installed
want=$(cat setup.cfg pyproject.toml | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test,demo,docs,pretrained,text,vision]'
    echo "$want" > "$stamp"
fi
