#!/usr/bin/env bash
# ROAR / KAR on real I3A cells (thesis 2.3.3, Fig. 43; issue #3, item 6), results in bench/results/roar-i3a/:
# random, gradient, lrp-epsilon and deeptaylor x 0-80% of the pixels replaced (steps of 10) x ROAR and
# KAR = 64 retrainings plus the base model (the 0% point of every curve), each a fresh network trained
# for 3 epochs (batch 128, cosine lr decay) on a stratified 800 cells (640 train + 160 validation)
# and tested on 400 others (of 10,872).
#
# Measured here, 2 shared CPU cores, OMP_NUM_THREADS=1: one retraining 36 s (35.6 s CPU; 0.58 ACA
# at 0%), DeepTaylor maps 11 s per 400 cells. Estimate: 65 x 36 s + ~80 s of maps for the three
# methods on 1,200 cells = ~41 minutes. With torch's default of 2 threads the same retraining took
# 2-3x longer while other engineers' jobs ran (oversubscription); set OMP_NUM_THREADS=2 on an idle
# machine. Resumable: rerun the same command after an interruption; finished rows are kept.
#
#   bench/run_roar.sh [OUT] [more `xal roar` options, which override these]
#   bench/run_roar.sh /tmp/roar-smoke --train-size 60 --test-size 30 --max-epochs 1 --fractions 0,50
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/roar-i3a}"
shift || true
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${PYTHON:-.venv/bin/python}" -m backend.cli roar \
  --data "${XAL_I3A_DIR:-../shared/data/i3a}" --out "$OUT" \
  --methods random,gradient,lrp-epsilon,deeptaylor --fractions 0,10,20,30,40,50,60,70,80 \
  --train-size 800 --test-size 400 --max-epochs 3 --seed 0 \
  "$@"
