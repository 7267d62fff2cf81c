"""Sending the long jobs (rounds, pool clusterings) to the Celery workers, and sending them
again when no one holds them: the one way both the API and the workers send a job.

A job row carries a lease (`lease_expires_at`): its message in the broker holds it while the
job is queued, its worker (worker.jobs.holding_lease) while it runs. The API's sweeper
(backend.api.app) calls `send_waiting_jobs` every quarter of `job_lease_seconds`: a running
job whose lease ran out (its worker died) is queued again, and every queued job nobody holds
is sent (never sent because the broker was down, or its message unclaimed for a whole lease,
lost with a broker that restarted empty). Workers claim only queued jobs, by compare-and-set
(worker.jobs.claim), so a message too many is skipped and no job is computed twice at once."""

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, or_, select, update

from backend.core.broker import sender
from backend.core.db.models import PoolClustering, Round, utcnow
from backend.core.db.session import new_session
from backend.core.jobs import JobState, Task
from backend.core.queries import release_waiting_rounds
from backend.core.settings import get_settings

log = logging.getLogger(__name__)

JobModel = type[Round] | type[PoolClustering]
TASKS: dict[JobModel, Task] = {Round: Task.RUN_ROUND, PoolClustering: Task.CLUSTER_POOL}


def enqueue(model: JobModel, job_id: int) -> bool:
    """Sends a committed job to the workers unless someone holds its lease (the one way the API
    sends jobs; the sweeper is the outbox that sends again what this could not). The lease is taken first, by
    compare-and-set, so that API processes and the sweeper never send a job twice at once; when
    the broker is unreachable it is given back and the job stays queued for the sweeper. What
    queued the job is committed either way, and publishing is bounded (backend.core.broker), so a
    dead broker never holds up a request for long."""
    settings, now = get_settings(), utcnow()
    lease = now + timedelta(seconds=settings.job_lease_seconds)
    with new_session() as session:
        # an UPDATE's result is a CursorResult, which has rowcount; execute() is typed as Result (hence the ignore)
        taken = session.execute(
            update(model)
            .where(model.id == job_id, model.state == JobState.QUEUED, _lease_over(model, now))
            .values(lease_expires_at=lease)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    if not taken:
        return False
    try:
        sender().send_task(TASKS[model], args=[job_id], queue=settings.queue)
    except Exception as error:  # noqa: BLE001 - any broker failure: keep the job queued, send it later
        log.warning("could not send %s id %s to the broker (%s); it stays queued", model.__name__, job_id, error)
        with new_session() as session:
            session.execute(
                update(model)
                .where(model.id == job_id, model.lease_expires_at == lease)
                .values(lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )
            session.commit()
        return False
    return True


def send_waiting_jobs() -> list[Round | PoolClustering]:
    """The sweeper's pass; returns the jobs it sent."""
    now = utcnow()
    waiting: list[Round | PoolClustering] = []
    with new_session() as session:
        session.execute(release_waiting_rounds())
        for model in TASKS:
            abandoned = session.execute(
                update(model)
                .where(model.state == JobState.RUNNING, _lease_over(model, now))
                .values(
                    state=JobState.QUEUED, lease_expires_at=None, progress={"phase": "queued", "requeued": "worker lost"}
                )
                .returning(model.id, model.project_id)
                .execution_options(synchronize_session=False)
            ).all()
            for job_id, project_id in abandoned:
                log.warning(
                    "%s id %s of project %s: its worker stopped renewing its lease; queued again",
                    model.__name__,
                    job_id,
                    project_id,
                )
            # cast: mypy joins the union of the two classes to Base when it solves select()'s type variable
            waiting += cast(
                Sequence[Round | PoolClustering],
                session.scalars(
                    select(model).where(model.state == JobState.QUEUED, _lease_over(model, now)).order_by(model.id)
                ).all(),
            )
        session.commit()
    return [job for job in waiting if enqueue(type(job), job.id)]


def _lease_over(model: JobModel, now: datetime) -> ColumnElement[bool]:
    return or_(model.lease_expires_at.is_(None), model.lease_expires_at < now)
