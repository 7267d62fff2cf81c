"""Bookkeeping shared by the worker's long jobs (rounds, pool clusterings): rows with `state`,
`attempts`, `lease_expires_at`, `progress`, `error` and `finished_at`, written in short
sessions of their own. A worker claims a queued job and holds its lease while it computes;
the API's sweeper queues again a running job whose lease ran out (backend.services.jobs)."""
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import update

from backend.db.models import utcnow
from backend.db.session import new_session
from backend.settings import get_settings

log = logging.getLogger(__name__)


def claim(session, model, row_id: int):
    """Takes the job if it is queued, by compare-and-set: of two messages for one job (a re-send,
    a redelivery) one worker wins. A running job belongs to the worker renewing its lease."""
    now = utcnow()
    claimed = session.execute(
        update(model).where(model.id == row_id, model.state == "queued")
        .values(state="running", attempts=model.attempts + 1, error=None, started_at=now, progress={"phase": "loading"},
                lease_expires_at=now + timedelta(seconds=get_settings().job_lease_seconds))
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    return session.get(model, row_id) if claimed else None


@contextmanager
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
                        update(model).where(model.id == row_id, model.state == "running", model.attempts == attempt)
                        .values(lease_expires_at=utcnow() + timedelta(seconds=seconds))
                        .execution_options(synchronize_session=False))
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


def mark_failed(model, row_id: int, error: Exception) -> None:
    with new_session() as session:
        row = session.get(model, row_id)
        row.state, row.error, row.finished_at = "failed", f"{type(error).__name__}: {error}", utcnow()
        row.progress = {"phase": "failed"}
        session.commit()
