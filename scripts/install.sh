#!/usr/bin/env bash
# Creates .venv and installs XAL into it. torch comes first, pinned to the CPU build
# that lies on the machines' disk, so that no later step can pull a multi-GB CUDA build.
# zennit is installed without its dependencies: it requires torchvision, which does not
# work beside this torch (worker/ml/zennit_compat.py explains the stand-in).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=".venv/bin/python -m pip --disable-pip-version-check -q"
$pip install "torch==2.13.0"
$pip install -e ".${extras:+[$extras]}"
$pip install --no-deps "zennit==0.5.1"
