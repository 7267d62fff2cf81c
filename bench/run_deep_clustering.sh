#!/usr/bin/env bash
# Deep clustering benchmark on ../shared/data/i3a (cases 1-3 and k-means on raw pixels).
# About 40 minutes on 2 CPU cores at the defaults (800 cells, 5 + 3 epochs); arguments go to
# bench/deep_clustering.py (a smoke run: --cells 128 --pretrain-epochs 1 --cluster-epochs 1 --out-dir /tmp/dc-smoke;
# the log still goes to bench/results).
# Results: bench/results/deep-clustering-i3a.{csv,json,log} and deep-clustering-i3a-pca.png.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
.venv/bin/python bench/deep_clustering.py "$@" 2>&1 | tee bench/results/deep-clustering-i3a.log
