#!/usr/bin/env bash
# ROAR / KAR on real I3A cells (thesis 2.3.3, Fig. 43; issue #3, item 6), results in bench/results/roar-i3a/:
# random, gradient, lrp-epsilon and deeptaylor x 0, 20, 40, 60, 80% of the pixels replaced x ROAR
# and KAR = 32 retrainings plus the base model (the 0% point of every curve), each a fresh network
# trained for at most 6 epochs (batch 128, cosine lr decay, best checkpoint on validation) on a
# stratified 800 cells (640 train + 160 validation) and tested on 400 others (of 10,872).
#
# Measured here, 2 shared CPU cores, OMP_NUM_THREADS=1, beside other benchmarks: one retraining
# 70-90 s; the whole run about 45 minutes. With torch's default of 2 threads the same retraining
# took 2-3x longer while other jobs ran (oversubscription); set OMP_NUM_THREADS=2 on an idle
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
  --methods random,gradient,lrp-epsilon,deeptaylor --fractions 0,20,40,60,80 \
  --train-size 800 --test-size 400 --max-epochs 6 --seed 0 \
  "$@"
