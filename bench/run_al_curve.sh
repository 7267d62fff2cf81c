#!/usr/bin/env bash
# The active-learning experiment at real scale behind bench/results/al-i3a-full-c/ (issue #11;
# al-i3a-full/ and -b/ are older starts, made before the batch-norm fix):
# `xal simulate --curve` on the 10,872 I3A cells (test = 20% of each class by content hash,
# validation = the next 3%, pool = the rest), one run per case and seed, step by step to --to %
# of the pool (k = 2%, then 1% per step), bf16, class-balanced loss, at most 20 epochs per step
# with patience 4 on the fixed validation set, warm start from the previous step. bf16 is what
# the committed runs used; it pays only on a CPU with AVX512-BF16 or AMX (or a GPU): on an
# AVX2-only CPU it is about 7x slower than fp32 (worker.ml.training.bf16_is_fast), and the
# contrastive pretraining alone did not finish one of its 20 epochs in 40 minutes there.
#
#   bench/run_al_curve.sh QUEUE_FILE [--to 10]
#
# QUEUE_FILE lists "case seed" pairs, one per line, run in that order; two of these scripts on two
# queue files keep two cores busy (one torch thread each). Resumable at every step: rerun the same
# command; a larger --to extends the finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
queue="$1"; shift
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
while read -r case seed; do
  [ -z "${case:-}" ] && continue
  "${PYTHON:-.venv/bin/python}" -m backend.cli simulate --curve \
    --data "${XAL_I3A_DIR:-../shared/data/i3a}" --out "${XAL_CURVE_OUT:-bench/results/al-i3a-full-c}" \
    --cache "${XAL_SIMULATION_CACHE:-${TMPDIR:-/tmp}/xal-al-i3a-cache}" \
    --precision bf16 --cases "$case" --seeds "$seed" "$@"
done < "$queue"
