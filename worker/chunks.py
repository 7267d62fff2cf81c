"""A large pool scored in chunks by every worker on the queue (issue #6).

When a round's unlabeled pool holds more than `XAL_SCORING_CHUNK_SIZE` cells, the round's task
passes `ChunkedScoring` to worker.rounds.compute_round as the executor of the pool's scoring:
it puts the trained model in the blob store and maps the scoring over chunks of the pool with
worker.jobs.map_chunks, which sends one `xal.score_chunk` task per chunk and computes chunks in
the round's task too. Each chunk computes its cells' outputs (worker.ml.strategies.
compute_pool_outputs); their concatenation, in pool order, is ranked by compute_round as an
unchunked round's outputs are. The chunk boundaries keep every batch's cells as in one pass, so
the concatenated outputs are those of an unchunked run, bit for bit."""

import time
from dataclasses import dataclass
from pathlib import Path

from backend.core.blobs import get_blob_store
from backend.core.db.models import Round
from backend.core.jobs import Task
from backend.core.settings import get_settings
from worker.celery_app import celery_app
from worker.jobs import chunk_file, chunks_summary, compute_chunk, map_chunks
from worker.rounds import RoundInputs, score_in_process, scoring_batch_size


@dataclass
class ScoringJob:
    """What the chunk tasks of one attempt of a round need (job.pkl)."""

    inputs: RoundInputs
    checkpoint_key: str  # the round's trained model, in the blob store
    chunks: list[tuple[int, int]]  # [start, stop) of each chunk in inputs.pool_ids


def needs_chunks(inputs: RoundInputs) -> bool:
    """Only a round with a model and a strategy that reads the pool's cells scores them one by one."""
    from worker.ml.strategies import needs

    return (
        inputs.number > 0
        and inputs.batch_size > 0
        and bool(needs(inputs.strategy))
        and len(inputs.pool_ids) > get_settings().scoring_chunk_size
    )


class ChunkedScoring:
    """A pool scorer for compute_round (worker.rounds.PoolScorer) in the task of one attempt
    of a round; `summary` then says how the chunks were computed."""

    def __init__(self, round_id: int, attempt: int):
        self.round_id, self.attempt = round_id, attempt
        self.summary: dict = {}

    def __call__(self, model, inputs: RoundInputs, device):
        from worker.ml.strategies import PoolOutputs, concatenate_pool_outputs, pool_chunks
        from worker.ml.training import save_checkpoint

        chunks = pool_chunks(len(inputs.pool_ids), get_settings().scoring_chunk_size, scoring_batch_size(inputs))
        job = ScoringJob(inputs, get_blob_store().put(save_checkpoint(model)), chunks)
        progress = {"phase": "scoring", "pool": len(inputs.pool_ids)}
        # the chunks this task computes are scored with the model it holds; other workers load it
        here = lambda _job, _folder, index: _scored_chunk(model, job, index, device)  # noqa: E731
        parts = map_chunks(Round, self.round_id, self.attempt, job, Task.SCORE_CHUNK, here, **progress)
        self.summary = chunks_summary(chunks, parts)
        return concatenate_pool_outputs([PoolOutputs.from_arrays(part) for part in parts])


@celery_app.task(name=Task.SCORE_CHUNK)
def score_chunk(round_id: int, attempt: int, index: int) -> str:
    return compute_chunk(Round, round_id, attempt, index, _chunk_outputs)


def _chunk_outputs(job: ScoringJob, folder: Path, index: int) -> bytes:
    """In a chunk task: the chunk's file, scored with the round's model from the blob store."""
    from worker.ml.training import load_checkpoint, resolve_device

    device = resolve_device(get_settings().device)
    return _scored_chunk(load_checkpoint(get_blob_store().get(job.checkpoint_key), map_location=device), job, index, device)


def _scored_chunk(model, job: ScoringJob, index: int, device) -> bytes:
    """The chunk's PoolOutputs as .npz bytes, with the seconds it took and who computed it."""
    started = time.perf_counter()
    return chunk_file(score_in_process(model, job.inputs, device, *job.chunks[index]).arrays(), started)
