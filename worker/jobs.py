"""Bookkeeping shared by the worker's long jobs (rounds, pool clusterings): rows with `state`,
`attempts`, `lease_expires_at`, `progress`, `error` and `finished_at`, written in short
sessions of their own. A worker claims a queued job and holds its lease while it computes;
the API's sweeper queues again a running job whose lease ran out (backend.core.outbox).

A job too large for one worker (a round scoring a large pool: worker.chunks; a clustering
encoding one: worker.clustering) is split into chunk tasks that any worker takes, and a merge
task that the chunk completing the set sends. What they share lives in the job's folder under
the data dir, one per attempt (`job_folder`): the job's inputs, written by the job's task, and
one file per chunk, written atomically, so that a file that exists is the chunk's result. No
Celery result backend is needed: the job row, locked while a chunk's completion is counted,
decides who sends the merge. A redelivered chunk finds its file and only counts again; a chunk
or merge of an older attempt of the job (it was rerun) is dropped by `take_up`."""

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
    """In a chunk or merge task: whether this attempt of the job is still running; if so its
    lease is renewed now. Chunks are often shorter than the quarter lease after which
    holding_lease first renews, and between the job's task and the merge no one else holds the
    lease: without this a job computed by one worker in many short chunks would be requeued."""
    with new_session() as session:
        renewed = session.execute(
            update(model)
            .where(model.id == row_id, model.state == JobState.RUNNING, model.attempts == attempt)
            .values(lease_expires_at=utcnow() + timedelta(seconds=get_settings().job_lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
        return renewed == 1


def count_completion(model, row_id: int, attempt: int, n_chunks: int, phase: str) -> bool:
    """Counts the chunk files with the job row locked; True for the one call that finds the set
    complete (it sends the merge). The row's progress (in `phase`, the chunks' phase) says how
    many chunks are done, and becomes "merging" with the last."""
    folder = job_folder(model, row_id, attempt)
    with new_session() as session:
        # an UPDATE first: it takes the row lock on PostgreSQL and the write lock on SQLite
        # before anything is read, so two chunks finishing at once are counted one after the other
        session.execute(update(model).where(model.id == row_id).values(attempts=model.attempts))
        row = session.get(model, row_id)
        if row.state != "running" or row.attempts != attempt or row.progress.get("phase") != phase:
            session.rollback()
            return False
        done = sum(chunk_path(folder, index).exists() for index in range(n_chunks))
        complete = done == n_chunks
        row.progress = {**row.progress, "chunks_done": done, **({"phase": "merging"} if complete else {})}
        session.commit()
        return complete


def job_folder(model, row_id: int, attempt: int) -> Path:
    return get_settings().data_dir / "chunks" / f"{model.__tablename__}-{row_id}" / f"attempt-{attempt}"


def send_chunks(model, row_id: int, attempt: int, job, chunk_task: str, **progress) -> None:
    """In the job's task: writes `job` (what the chunk and merge tasks share; its `chunks` are
    the [start, stop) of each) to the job's folder, sets the row's progress to the chunks'
    phase (`progress`, with a "phase") and sends `chunk_task(row_id, attempt, index)` for each
    chunk. Files the chunks need beside the job are written to job_folder before this."""
    from worker.celery_app import celery_app

    folder = job_folder(model, row_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "job.pkl", pickle.dumps(job))
    set_progress(model, row_id, **progress, chunks_done=0, chunks=len(job.chunks))
    for index in range(len(job.chunks)):
        celery_app.send_task(chunk_task, args=[row_id, attempt, index], queue=get_settings().queue)


def compute_chunk(
    model, row_id: int, attempt: int, index: int, phase: str, compute: Callable[[object, Path, int], bytes], merge_task: str
) -> str:
    """A chunk task: unless the attempt is over or the chunk's file exists (a redelivery),
    `compute(job, folder, index)` gives the chunk's file (chunk_file), written while the job's
    lease is held; then the chunk is counted and the count that completes the set sends
    `merge_task(row_id, attempt)`."""
    from worker.celery_app import celery_app

    if not take_up(model, row_id, attempt):
        return "dropped"
    folder = job_folder(model, row_id, attempt)
    path = chunk_path(folder, index)
    try:
        job = read_job(folder)
        if not path.exists():
            with holding_lease(model, row_id, attempt):  # the job is being worked on: no one requeues it
                write_atomically(path, compute(job, folder, index))
    except Exception as error:
        log.exception("chunk %s of %s %s failed", index, model.__name__, row_id)
        mark_failed(model, row_id, attempt, error)
        return "failed"
    if count_completion(model, row_id, attempt, len(job.chunks), phase):
        celery_app.send_task(merge_task, args=[row_id, attempt], queue=get_settings().queue)
    return "done"


def read_job(folder: Path):
    return pickle.loads((folder / "job.pkl").read_bytes())


def chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index}.npz"


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
