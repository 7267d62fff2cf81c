#!/usr/bin/env bash
# The active-learning experiment behind bench/results/al-i3a/ (issue #3, item 7): every case of
# worker/experiments/per_budget.py (rs, cal, three xal-*, in-rs, in-al) x seeds 0,1,2 x budgets
# 2, 5, 10, 20 and 100% of the pool, on real I3A cells, the ground truth as the oracle.
#
# Reduced to fit ~90 minutes on 2 CPU cores: a stratified pool of 300 and test split of 200 cells
# (of 10,872); at most 10 epochs per round and 20 for the trainings done once (pretraining, the
# 100% ceiling), each with a cosine lr decay, early stopping (patience 3) and the best checkpoint on
# a validation split; batch 32; pretraining on 500 cells without Golgi.
# Resumable: rerun the same command after an interruption.
#
#   bench/run_al_experiment.sh [more `xal simulate` options, which override these]
#   bench/run_al_experiment.sh --out /tmp/smoke --seeds 0 --budgets 10      # a smoke run
#
# One torch thread: on these 2 cores shared with other busy processes, rounds ran 3-4x faster
# with one than with torch's default of one per core (oversubscription); the estimate was
# measured so. On a machine of its own, OMP_NUM_THREADS=2 may be faster.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${PYTHON:-.venv/bin/python}" -m backend.cli simulate \
  --data "${XAL_I3A_DIR:-../shared/data/i3a}" --out bench/results/al-i3a \
  --cache "${XAL_SIMULATION_CACHE:-${TMPDIR:-/tmp}/xal-al-i3a-cache}" \
  --cases all --budgets 2,5,10,20,100 --seeds 0,1,2 \
  --pool-size 300 --test-size 200 --max-epochs 10 --single-training-epochs 20 --patience 3 --batch-size 32 \
  --pretrain-size 500 --pretrain-exclude Golgi \
  "$@"
