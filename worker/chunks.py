"""A large pool scored in chunks by every worker on the queue (issue #6).

When a round's unlabeled pool holds more than `XAL_SCORING_CHUNK_SIZE` cells, the round task
trains the model once (worker.rounds.train_and_evaluate), writes its inputs and result so far
to the shared data dir and sends one `xal.score_chunk` task per chunk of the pool. Each chunk
task loads the checkpoint, computes its cells' outputs (worker.ml.strategies.compute_pool_outputs)
and writes them beside the job; the one whose file completes the set sends `xal.merge_chunks`,
which concatenates the outputs in pool order, ranks the pool once and stores the round as an
unchunked round is stored (worker.rounds.select_batch, store_round). The chunk boundaries keep every
batch's cells as in one pass, so the merged outputs are those of an unchunked run, bit for bit.
The job folder, the counting of chunks and the dropping of stale ones are worker.jobs's, shared
with a clustering encoded in chunks (worker.clustering)."""

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.core.blobs import get_blob_store
from backend.core.db.models import Round
from backend.core.jobs import Task
from backend.core.settings import get_settings
from worker.celery_app import celery_app
from worker.jobs import (
    chunk_file,
    chunk_path,
    chunks_summary,
    compute_chunk,
    holding_lease,
    job_folder,
    mark_failed,
    read_job,
    remove_job_folders,
    send_chunks,
    set_progress,
    take_up,
)
from worker.rounds import (
    RoundInputs,
    RoundResult,
    load_cells,
    scoring_batch_size,
    select_batch,
    store_round,
    train_and_evaluate,
)

log = logging.getLogger(__name__)


@dataclass
class ScoringJob:
    """What the chunk and merge tasks of one attempt of a round share (job.pkl)."""

    inputs: RoundInputs
    result: RoundResult  # train_and_evaluate's, its checkpoint in the blob store (checkpoint_key)
    checkpoint_key: str
    chunks: list[tuple[int, int]]  # [start, stop) of each chunk in inputs.pool_ids
    dispatched_at: float  # time.time() when the chunks were sent


def needs_chunks(inputs: RoundInputs) -> bool:
    """Only a round with a model and a strategy that reads the pool's cells scores them one by one."""
    from worker.ml.strategies import needs

    return (
        inputs.number > 0
        and inputs.batch_size > 0
        and bool(needs(inputs.strategy))
        and len(inputs.pool_ids) > get_settings().scoring_chunk_size
    )


def score_in_chunks(round_id: int, attempt: int, inputs: RoundInputs) -> str:
    """In the round task: train, then hand the pool's scoring to the chunk tasks."""
    from worker.ml.strategies import pool_chunks
    from worker.ml.training import resolve_device

    report = lambda **progress: set_progress(Round, round_id, **progress)  # noqa: E731
    _, _, result = train_and_evaluate(inputs, resolve_device(get_settings().device), report)
    checkpoint_key = get_blob_store().put(result.checkpoint)
    result.checkpoint = None
    chunks = pool_chunks(len(inputs.pool_ids), get_settings().scoring_chunk_size, scoring_batch_size(inputs))
    send_chunks(
        Round,
        round_id,
        attempt,
        ScoringJob(inputs, result, checkpoint_key, chunks, time.time()),
        Task.SCORE_CHUNK,
        phase="scoring",
        pool=len(inputs.pool_ids),
    )
    return "scoring in chunks"


@celery_app.task(name=Task.SCORE_CHUNK)
def score_chunk(round_id: int, attempt: int, index: int) -> str:
    return compute_chunk(Round, round_id, attempt, index, "scoring", _chunk_outputs, Task.MERGE_CHUNKS)


@celery_app.task(name=Task.MERGE_CHUNKS)
def merge_chunks(round_id: int, attempt: int) -> str:
    if not take_up(Round, round_id, attempt):
        return "dropped"
    with holding_lease(Round, round_id, attempt):
        return _merge(round_id, attempt, job_folder(Round, round_id, attempt))


def _merge(round_id: int, attempt: int, folder: Path) -> str:
    from worker.ml.strategies import PoolOutputs, concatenate_pool_outputs
    from worker.ml.training import load_checkpoint, resolve_device

    try:
        job = read_job(folder)
        started = time.perf_counter()
        device = resolve_device(get_settings().device)
        checkpoint = get_blob_store().get(job.checkpoint_key)
        model = load_checkpoint(checkpoint, map_location=device)
        parts = [dict(np.load(chunk_path(folder, index))) for index in range(len(job.chunks))]
        outputs = concatenate_pool_outputs([PoolOutputs.from_arrays(part) for part in parts])
        result = dataclasses.replace(job.result, checkpoint=checkpoint)
        labeled = load_cells(job.inputs.labeled_hashes, job.inputs.channel)
        # score_s: from sending the chunks to the end of the ranking, like an unchunked round's
        select_batch(
            job.inputs,
            model,
            device,
            labeled,
            outputs,
            result,
            lambda **progress: set_progress(Round, round_id, **progress),
            started - (time.time() - job.dispatched_at),
        )
        result.summary["chunks"] = chunks_summary(job.chunks, parts)
        result.timings["merge_s"] = time.perf_counter() - started
    except Exception as error:
        log.exception("merging the chunks of round %s failed", round_id)
        mark_failed(Round, round_id, attempt, error)
        return "failed"
    store_round(round_id, job.inputs, result)
    remove_job_folders(Round, round_id, attempt)
    return "done"


def _chunk_outputs(job: ScoringJob, folder: Path, index: int) -> bytes:
    """The chunk's PoolOutputs as .npz bytes, with the seconds it took and who computed it."""
    from worker.ml.strategies import compute_pool_outputs
    from worker.ml.training import load_checkpoint, resolve_device

    started = time.perf_counter()
    inputs = job.inputs
    device = resolve_device(get_settings().device)
    model = load_checkpoint(get_blob_store().get(job.checkpoint_key), map_location=device)
    start, stop = job.chunks[index]
    cells = load_cells(inputs.pool_hashes[start:stop], inputs.channel)
    outputs = compute_pool_outputs(
        model,
        cells,
        inputs.strategy,
        inputs.strategy_options,
        device,
        scoring_batch_size(inputs),
        inputs.model_settings.get("precision", "fp32"),
    )
    return chunk_file(outputs.arrays(), started)
