"""A large pool scored in chunks by every worker on the queue (issue #6).

When a round's unlabeled pool holds more than `XAL_SCORING_CHUNK_SIZE` cells, the round task
trains the model once (worker.rounds.train_and_evaluate), writes its inputs and result so far
to the shared data dir and sends one `xal.score_chunk` task per chunk of the pool. Each chunk
task loads the checkpoint, computes its cells' outputs (worker.ml.strategies.compute_pool_outputs)
and writes them beside the job; the one whose file completes the set sends `xal.merge_chunks`,
which concatenates the outputs in pool order, ranks the pool once and stores the round as an
unchunked round is stored (worker.rounds.select_batch, _store). The chunk boundaries keep every
batch's cells as in one pass, so the merged outputs are those of an unchunked run, bit for bit.

No Celery result backend is needed (the embedded filesystem broker has none): the chunk files
are the results, and the round row, locked while a chunk's completion is counted, decides who
sends the merge. A redelivered chunk finds its file and only counts again; a chunk or merge of
an older attempt of the round (it was rerun) is dropped."""
import logging
import os
import pickle
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import update

from backend.blobs import get_blob_store
from backend.db.models import Round, utcnow
from backend.db.session import new_session
from backend.settings import get_settings
from worker.celery_app import celery_app
from worker.jobs import holding_lease, mark_failed, set_progress
from worker.rounds import (
    RoundInputs, _store, load_cells, scoring_batch_size, select_batch, train_and_evaluate,
)

log = logging.getLogger(__name__)


@dataclass
class ScoringJob:
    """What the chunk and merge tasks of one attempt of a round share (job.pkl)."""

    inputs: RoundInputs
    result: dict  # train_and_evaluate's, its checkpoint replaced by checkpoint_key
    checkpoint_key: str
    chunks: list[tuple[int, int]]  # [start, stop) of each chunk in inputs.pool_ids
    dispatched_at: float  # time.time() when the chunks were sent


def needs_chunks(inputs: RoundInputs) -> bool:
    """Only a round with a model scores the pool cell by cell; round 0 just draws."""
    return inputs.number > 0 and inputs.batch_size > 0 and len(inputs.pool_ids) > get_settings().scoring_chunk_size


def score_in_chunks(round_id: int, attempt: int, inputs: RoundInputs) -> str:
    """In the round task: train, then hand the pool's scoring to the chunk tasks."""
    from worker.ml.strategies import pool_chunks
    from worker.ml.training import resolve_device

    report = lambda **progress: set_progress(Round, round_id, **progress)  # noqa: E731
    _, _, result = train_and_evaluate(inputs, resolve_device(get_settings().device), report)
    checkpoint_key = get_blob_store().put(result.pop("checkpoint"))
    chunks = pool_chunks(len(inputs.pool_ids), get_settings().scoring_chunk_size, scoring_batch_size(inputs))
    folder = _folder(round_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / "job.pkl", pickle.dumps(ScoringJob(inputs, result, checkpoint_key, chunks, time.time())))
    report(phase="scoring", pool=len(inputs.pool_ids), chunks_done=0, chunks=len(chunks))
    for index in range(len(chunks)):
        celery_app.send_task("xal.score_chunk", args=[round_id, attempt, index], queue=get_settings().queue)
    return "scoring in chunks"


@celery_app.task(name="xal.score_chunk")
def score_chunk(round_id: int, attempt: int, index: int) -> str:
    if not _take_up(round_id, attempt):
        return "dropped"
    folder = _folder(round_id, attempt)
    path = folder / f"chunk-{index}.npz"
    try:
        job = _read_job(folder)
        if not path.exists():
            with holding_lease(Round, round_id, attempt):  # the round is being worked on: no one requeues it
                _write_atomically(path, _chunk_outputs(job, index))
    except Exception as error:
        log.exception("chunk %s of round %s failed", index, round_id)
        mark_failed(Round, round_id, error)
        return "failed"
    if _count_completion(round_id, attempt, folder, len(job.chunks)):
        celery_app.send_task("xal.merge_chunks", args=[round_id, attempt], queue=get_settings().queue)
    return "done"


@celery_app.task(name="xal.merge_chunks")
def merge_chunks(round_id: int, attempt: int) -> str:
    if not _take_up(round_id, attempt):
        return "dropped"
    with holding_lease(Round, round_id, attempt):
        return _merge(round_id, attempt, _folder(round_id, attempt))


def _merge(round_id: int, attempt: int, folder: Path) -> str:
    from worker.ml.strategies import concatenate_pool_outputs
    from worker.ml.training import load_checkpoint, resolve_device

    try:
        job = _read_job(folder)
        started = time.perf_counter()
        device = resolve_device(get_settings().device)
        checkpoint = get_blob_store().get(job.checkpoint_key)
        model = load_checkpoint(checkpoint, map_location=device)
        parts = [dict(np.load(folder / f"chunk-{index}.npz")) for index in range(len(job.chunks))]
        outputs = concatenate_pool_outputs([_outputs_from(part) for part in parts])
        result = {**job.result, "checkpoint": checkpoint}
        labeled = load_cells(job.inputs.labeled_hashes, job.inputs.channel)
        # score_s: from sending the chunks to the end of the ranking, like an unchunked round's
        select_batch(job.inputs, model, device, labeled, outputs, result,
                     lambda **progress: set_progress(Round, round_id, **progress),
                     started - (time.time() - job.dispatched_at))
        result["summary"]["chunks"] = {
            "n": len(job.chunks), "size": job.chunks[0][1] - job.chunks[0][0],
            "workers": len({str(part["worker"]) for part in parts}),
            "compute_s": float(sum(float(part["seconds"]) for part in parts)),
        }
        result["timings"]["merge_s"] = time.perf_counter() - started
    except Exception as error:
        log.exception("merging the chunks of round %s failed", round_id)
        mark_failed(Round, round_id, error)
        return "failed"
    _store(round_id, job.inputs, result)
    _remove_attempts_up_to(round_id, attempt)
    return "done"


def _chunk_outputs(job: ScoringJob, index: int) -> bytes:
    """The chunk's PoolOutputs as .npz bytes, with the seconds it took and who computed it."""
    from worker.ml.strategies import compute_pool_outputs
    from worker.ml.training import load_checkpoint, resolve_device

    started = time.perf_counter()
    inputs = job.inputs
    device = resolve_device(get_settings().device)
    model = load_checkpoint(get_blob_store().get(job.checkpoint_key), map_location=device)
    start, stop = job.chunks[index]
    cells = load_cells(inputs.pool_hashes[start:stop], inputs.channel)
    outputs = compute_pool_outputs(model, cells, inputs.strategy, inputs.strategy_options, device, scoring_batch_size(inputs))
    arrays = {"probabilities": outputs.probabilities}
    if outputs.relevance is not None:
        relevance = outputs.relevance
        arrays.update(concept=relevance.concept, logits=relevance.logits, predicted=relevance.predicted, target=relevance.target)
        if relevance.input_maps is not None:
            arrays["input_maps"] = relevance.input_maps
    arrays["seconds"] = np.float64(time.perf_counter() - started)
    arrays["worker"] = np.str_(f"{socket.gethostname()}:{os.getpid()}")
    with tempfile.SpooledTemporaryFile() as buffer:
        np.savez(buffer, **arrays)
        buffer.seek(0)
        return buffer.read()


def _outputs_from(part):
    from worker.ml.relevance import RelevanceMaps
    from worker.ml.strategies import PoolOutputs

    relevance = None
    if "concept" in part:
        relevance = RelevanceMaps(input_maps=part["input_maps"] if "input_maps" in part else None,
                                  **{name: part[name] for name in ("concept", "logits", "predicted", "target")})
    return PoolOutputs(probabilities=part["probabilities"], relevance=relevance)


def _count_completion(round_id: int, attempt: int, folder: Path, n_chunks: int) -> bool:
    """Counts the chunk files with the round row locked; True for the one call that finds the
    set complete (it sends the merge). The row's progress says how many chunks are done."""
    with new_session() as session:
        # an UPDATE first: it takes the row lock on PostgreSQL and the write lock on SQLite
        # before anything is read, so two chunks finishing at once are counted one after the other
        session.execute(update(Round).where(Round.id == round_id).values(attempts=Round.attempts))
        round_ = session.get(Round, round_id)
        if round_.state != "running" or round_.attempts != attempt or round_.progress.get("phase") != "scoring":
            session.rollback()
            return False
        done = sum((folder / f"chunk-{index}.npz").exists() for index in range(n_chunks))
        complete = done == n_chunks
        round_.progress = {**round_.progress, "chunks_done": done, **({"phase": "merging"} if complete else {})}
        session.commit()
        return complete


def _take_up(round_id: int, attempt: int) -> bool:
    """Whether this attempt of the round is still running; if so its lease is renewed now.
    Chunks are often shorter than the quarter lease after which holding_lease first renews, and
    between the round task and the merge no one else holds the lease: without this a round
    scored by one worker in many short chunks would be requeued by the sweeper."""
    with new_session() as session:
        renewed = session.execute(
            update(Round).where(Round.id == round_id, Round.state == "running", Round.attempts == attempt)
            .values(lease_expires_at=utcnow() + timedelta(seconds=get_settings().job_lease_seconds))
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
        return renewed == 1


def _folder(round_id: int, attempt: int) -> Path:
    return get_settings().data_dir / "scoring" / f"round-{round_id}" / f"attempt-{attempt}"


def _read_job(folder: Path) -> ScoringJob:
    return pickle.loads((folder / "job.pkl").read_bytes())


def _write_atomically(path: Path, data: bytes) -> None:
    """Write then rename, so that a file that exists is complete (a chunk's file is its result)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _remove_attempts_up_to(round_id: int, attempt: int) -> None:
    for folder in _folder(round_id, attempt).parent.glob("attempt-*"):
        if int(folder.name.removeprefix("attempt-")) <= attempt:
            shutil.rmtree(folder, ignore_errors=True)
