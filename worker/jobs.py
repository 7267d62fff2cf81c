"""Bookkeeping shared by the worker's long jobs (rounds, pool clusterings): rows with `state`,
`attempts`, `lease_expires_at`, `progress`, `error` and `finished_at`, written in short
sessions of their own. A worker claims a queued job and holds its lease while it computes;
the API's sweeper queues again a running job whose lease ran out (backend.core.outbox).

A job too large for one worker (a round scoring a large pool: worker.chunks; a clustering
encoding one: worker.clustering) maps its per-cell work over chunks of the pool with
`map_chunks`, an executor the job's own task runs: it sends one chunk task per chunk so that
idle workers help, computes chunks itself too, and returns when every chunk is done. No worker
waits idle and nothing deadlocks: with no other worker free, the job's task computes every chunk.
What they share lives in the job's folder under the data dir, one per attempt (`job_folder`):
the job's inputs, written by the job's task, a claim file per chunk (whoever creates it first
computes the chunk, and touches it while it does) and the chunk's result, written atomically,
so that a file that exists is complete. No Celery result backend is needed. A chunk whose
claimant died (its claim not touched for a lease) is computed by the job's task; a chunk task
of an older attempt of the job (it was rerun) or of a finished one is dropped by `take_up`."""

import contextlib
import logging
import os
import pickle
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import update

from backend.core.db.models import utcnow
from backend.core.db.session import new_session
from backend.core.jobs import JobState
from backend.core.settings import get_settings

log = logging.getLogger(__name__)


def claim(session, model, row_id: int):
    """Takes the job if it is queued, by compare-and-set: of two messages for one job (a re-send,
    a redelivery) one worker wins. A running job belongs to the worker renewing its lease."""
    now = utcnow()
    claimed = session.execute(
        update(model)
        .where(model.id == row_id, model.state == JobState.QUEUED)
        .values(
            state="running",
            attempts=model.attempts + 1,
            error=None,
            started_at=now,
            progress={"phase": "loading"},
            lease_expires_at=now + timedelta(seconds=get_settings().job_lease_seconds),
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return session.get(model, row_id) if claimed else None


@contextlib.contextmanager
def holding_lease(model, row_id: int, attempt: int) -> Iterator[None]:
    """Renews the lease of this attempt of the job every quarter of `job_lease_seconds` while
    the block runs, from a thread of its own: a phase (ranking a large pool) can run far longer
    than a lease without reporting progress. A job cancelled or queued again meanwhile is not
    renewed, and its result is dropped when stored."""
    seconds = get_settings().job_lease_seconds
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 4):
            try:
                with new_session() as session:
                    session.execute(
                        update(model)
                        .where(model.id == row_id, model.state == JobState.RUNNING, model.attempts == attempt)
                        .values(lease_expires_at=utcnow() + timedelta(seconds=seconds))
                        .execution_options(synchronize_session=False)
                    )
                    session.commit()
            except Exception as error:  # noqa: BLE001 - the database restarting: the next beat tries again
                log.warning("could not renew the lease of %s id %s (%s)", model.__name__, row_id, error)

    renewer = threading.Thread(target=renew, name=f"{model.__tablename__}-{row_id}-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()


def set_progress(model, row_id: int, **progress) -> None:
    with new_session() as session:
        session.get(model, row_id).progress = progress
        session.commit()


def mark_failed(model, row_id: int, attempt: int, error: Exception) -> None:
    """Fails this attempt of the job, by compare-and-set: a worker of an older attempt (the job
    was queued again, and maybe is running again) fails nothing but its own, dropped, work."""
    with new_session() as session:
        session.execute(
            update(model)
            .where(model.id == row_id, model.state == JobState.RUNNING, model.attempts == attempt)
            .values(
                state=JobState.FAILED,
                error=f"{type(error).__name__}: {error}",
                finished_at=utcnow(),
                progress={"phase": "failed"},
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()


def take_up(model, row_id: int, attempt: int) -> bool:
    """Whether this attempt of the job is still running; if so its lease is renewed now. A chunk
    task asks as it starts (so that a job whose task is busy in one long chunk is not
    requeued), and the job's task while it waits for chunks (map_chunks)."""
    with new_session() as session:
        renewed = session.execute(
            update(model)
            .where(model.id == row_id, model.state == JobState.RUNNING, model.attempts == attempt)
            .values(lease_expires_at=utcnow() + timedelta(seconds=get_settings().job_lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
        return renewed == 1


def job_folder(model, row_id: int, attempt: int) -> Path:
    return get_settings().data_dir / "chunks" / f"{model.__tablename__}-{row_id}" / f"attempt-{attempt}"


ChunkWork = Callable[[object, Path, int], bytes]  # (job, its folder, chunk index) -> the chunk's file (chunk_file)
POLL_SECONDS = 0.2  # how often the job's task looks for the chunks others compute
STATE_CHECK_SECONDS = 5.0  # how often, while it waits, it checks that its attempt still runs


class AttemptEnded(RuntimeError):
    """The job's attempt was failed (by a chunk), cancelled or queued again while it waited."""


def map_chunks(model, row_id: int, attempt: int, job, chunk_task: str, work: ChunkWork, **progress) -> list[dict]:
    """The executor of a job's chunks, run by the job's task while it holds the job's lease:
    writes `job` (what the chunk tasks need; its `chunks` are the [start, stop) of each) to the
    job's folder, sends `chunk_task(row_id, attempt, index)` for each chunk, computes with
    `work` every chunk no one has claimed, waits for the others, and gives back every chunk's
    arrays in chunk order. The row's progress (`progress`, with a "phase") counts the chunks
    done. Files the chunks need beside the job are written to job_folder before this."""
    from worker.celery_app import celery_app

    folder = job_folder(model, row_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "job.pkl", pickle.dumps(job))
    n_chunks = len(job.chunks)
    set_progress(model, row_id, **progress, chunks_done=0, chunks=n_chunks)
    for index in range(n_chunks):
        celery_app.send_task(chunk_task, args=[row_id, attempt, index], queue=get_settings().queue)
    reported, checked = 0, time.monotonic()
    while True:
        for index in range(n_chunks):
            if not chunk_path(folder, index).exists() and (claim_chunk(folder, index) or _take_over(folder, index)):
                _compute(job, folder, index, work)
        done = sum(chunk_path(folder, index).exists() for index in range(n_chunks))
        if done != reported:
            set_progress(model, row_id, **progress, chunks_done=done, chunks=n_chunks)
            reported = done
        if done == n_chunks:
            return [dict(np.load(chunk_path(folder, index))) for index in range(n_chunks)]
        if time.monotonic() - checked > STATE_CHECK_SECONDS:
            if not take_up(model, row_id, attempt):
                raise AttemptEnded(f"{model.__name__} {row_id} attempt {attempt} ended while its chunks were computed")
            checked = time.monotonic()
        time.sleep(POLL_SECONDS)


def compute_chunk(model, row_id: int, attempt: int, index: int, work: ChunkWork) -> str:
    """A chunk task: unless the attempt is over, the chunk is done or someone (the job's task,
    a redelivery of this message) has claimed it, computes it while the job's lease is held."""
    if not take_up(model, row_id, attempt):
        return "dropped"
    folder = job_folder(model, row_id, attempt)
    try:
        job = read_job(folder)
        if chunk_path(folder, index).exists() or not claim_chunk(folder, index):
            return "claimed elsewhere"
    except FileNotFoundError:  # the job finished (its folder is removed) while this task started
        return "dropped"
    try:
        with holding_lease(model, row_id, attempt):
            _compute(job, folder, index, work)
    except Exception as error:
        log.exception("chunk %s of %s %s failed", index, model.__name__, row_id)
        mark_failed(model, row_id, attempt, error)
        return "failed"
    return "done"


def claim_chunk(folder: Path, index: int) -> bool:
    """True for the one caller that creates the chunk's claim file (atomic on a shared filesystem)."""
    try:
        os.close(os.open(claim_path(folder, index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _take_over(folder: Path, index: int) -> bool:
    """A claim not touched for a whole lease is a dead worker's: the job's task computes the chunk."""
    claim = claim_path(folder, index)
    try:
        stale = time.time() - claim.stat().st_mtime > get_settings().job_lease_seconds
    except FileNotFoundError:
        return False
    if stale:
        log.warning("chunk %s of %s: its claimant stopped; computing it here", index, folder)
        claim.touch()
    return stale


def _compute(job, folder: Path, index: int, work: ChunkWork) -> None:
    """Computes a claimed chunk, touching its claim every quarter lease so no one takes it over."""
    claim, stop = claim_path(folder, index), threading.Event()

    def beat() -> None:
        while not stop.wait(get_settings().job_lease_seconds / 4):
            with contextlib.suppress(OSError):
                claim.touch()

    beating = threading.Thread(target=beat, name=f"chunk-{index}-claim", daemon=True)
    beating.start()
    try:
        write_atomically(chunk_path(folder, index), work(job, folder, index))
    finally:
        stop.set()
        beating.join()


def read_job(folder: Path):
    return pickle.loads((folder / "job.pkl").read_bytes())


def chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index}.npz"


def claim_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index}.claim"


def chunk_file(arrays: dict, started: float) -> bytes:
    """A chunk's result as .npz bytes: its arrays, the seconds it took (since `started`, a
    time.perf_counter()) and the worker process that computed it."""
    arrays = {
        **arrays,
        "seconds": np.float64(time.perf_counter() - started),
        "worker": np.str_(f"{socket.gethostname()}:{os.getpid()}"),
    }
    with tempfile.SpooledTemporaryFile() as buffer:
        np.savez(buffer, **arrays)
        buffer.seek(0)
        return buffer.read()


def chunks_summary(chunks: list[tuple[int, int]], parts: list[dict]) -> dict:
    """How a job's chunks were computed, from their files' arrays: kept with the job's result."""
    return {
        "n": len(chunks),
        "size": chunks[0][1] - chunks[0][0],
        "workers": len({str(part["worker"]) for part in parts}),
        "compute_s": float(sum(float(part["seconds"]) for part in parts)),
    }


def write_atomically(path: Path, data: bytes) -> None:
    """Write then rename, so that a file that exists is complete (a chunk's file is its result)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def remove_job_folders(model, row_id: int, up_to_attempt: int) -> None:
    """Once the job is stored: its folder and those of the attempts before it."""
    parent = job_folder(model, row_id, up_to_attempt).parent
    for folder in parent.glob("attempt-*"):
        if int(folder.name.removeprefix("attempt-")) <= up_to_attempt:
            shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # a newer attempt's folder stays
        parent.rmdir()
