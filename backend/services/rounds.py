"""The budget loop (thesis Table 2): round 0 queues the first k cells; when a step's cells
are all labeled, the next round fine-tunes, evaluates and queues the next m cells, until
the budget B is spent. Rounds are computed by Celery workers; the API never waits."""
import logging
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db.models import Image, Label, Project, ProjectClass, Round, Selection, utcnow
from backend.db.session import new_session
from backend.errors import Conflict
from backend.services.labeling import is_current, latest_round, open_round, unlabeled_selections
from backend.services.projects import count_pool, resolve_budget
from backend.settings import get_settings

log = logging.getLogger(__name__)


def start_project(session: Session, project: Project) -> Round:
    if project.state != "draft":
        raise Conflict(f"project {project.name!r} is already {project.state}")
    pool_size = count_pool(session, project)
    if pool_size == 0:
        raise Conflict("import a pool of images before starting the project")
    resolve_budget(project, pool_size)
    project.state = "active"
    round_ = Round(project_id=project.id, number=0)
    session.add(round_)
    session.commit()
    dispatch_round(round_)
    return round_


def open_next_round_if_step_done(session: Session, project: Project) -> Round | None:
    """Called after each label: when the open round's cells are all labeled, adds the next
    round (once: a concurrent twin hits the unique (project, number) key and backs off)."""
    round_ = open_round(session, project)
    if round_ is None:
        return None
    # Serialise step completion on the round row: two last labels committed at once would
    # otherwise each miss the other's (uncommitted) label and neither would open the next
    # round. NO KEY UPDATE, because each new label already holds a KEY SHARE lock on this row
    # (its foreign key), which a plain FOR UPDATE would deadlock against.
    session.execute(select(Round.id).where(Round.id == round_.id).with_for_update(key_share=True))
    # Any one unlabeled cell keeps the step open; the queue is served in rank order, so looking
    # from the last rank finds one at once instead of counting them all while holding the lock.
    if session.scalar(unlabeled_selections(round_).with_only_columns(Selection.id).order_by(Selection.rank.desc()).limit(1)):
        return None
    try:
        with session.begin_nested():
            next_round = Round(project_id=project.id, number=round_.number + 1)
            session.add(next_round)
    except IntegrityError:
        return None
    return next_round


def dispatch_round(round_: Round) -> bool:
    """Sends the round to the workers unless someone holds its lease. The lease is taken
    first, by compare-and-set, so that API processes and the sweeper never send a round twice
    at once; when the broker is unreachable it is given back, the round stays queued and the
    sweeper sends it once the broker is back. What queued the round is committed either way.
    Publishing is bounded (worker.celery_app), so a dead broker never holds up a request."""
    from worker.celery_app import celery_app

    settings = get_settings()
    now = utcnow()
    lease = now + timedelta(seconds=settings.round_lease_seconds)
    with new_session() as session:
        taken = session.execute(
            update(Round).where(Round.id == round_.id, Round.state == "queued", _lease_over(now))
            .values(lease_expires_at=lease).execution_options(synchronize_session=False)).rowcount
        session.commit()
    if not taken:
        return False
    try:
        celery_app.send_task("xal.run_round", args=[round_.id], queue=settings.queue)
    except Exception as error:  # noqa: BLE001 - any broker failure: keep the round queued, send it later
        log.warning("could not send round %s to the broker (%s); it stays queued", round_.id, error)
        with new_session() as session:
            session.execute(update(Round).where(Round.id == round_.id, Round.lease_expires_at == lease)
                            .values(lease_expires_at=None).execution_options(synchronize_session=False))
            session.commit()
        return False
    return True


def send_waiting_rounds() -> list[int]:
    """The sweeper's pass (backend.api.app runs it every quarter of `round_lease_seconds`):
    a running round whose worker stopped renewing its lease (it died) is queued again, and
    every queued round nobody holds is sent: never sent because the broker was down, or its
    message unclaimed for a whole lease (lost with a broker that restarted empty). Idempotent:
    a worker claims only a queued round, so a message too many is skipped. Returns the ids sent."""
    now = utcnow()
    with new_session() as session:
        abandoned = session.execute(
            update(Round).where(Round.state == "running", _lease_over(now))
            .values(state="queued", lease_expires_at=None, progress={"phase": "queued", "requeued": "worker lost"})
            .returning(Round.project_id, Round.number).execution_options(synchronize_session=False)).all()
        waiting = session.scalars(
            select(Round).where(Round.state == "queued", _lease_over(now)).order_by(Round.id)).all()
        session.commit()
    for project_id, number in abandoned:
        log.warning("project %s, round %s: its worker stopped renewing its lease; queued again", project_id, number)
    return [round_.id for round_ in waiting if dispatch_round(round_)]


def _lease_over(now):
    return or_(Round.lease_expires_at.is_(None), Round.lease_expires_at < now)


def rerun_round(session: Session, project: Project) -> Round:
    """Admin's trigger: re-sends the latest round when it failed, was cancelled or is stuck in the queue."""
    round_ = latest_round(session, project)
    if round_ is None or round_.state not in ("queued", "failed", "cancelled"):
        raise Conflict("only a queued, failed or cancelled round can be triggered again")
    round_.state, round_.error, round_.lease_expires_at = "queued", None, None
    session.commit()
    dispatch_round(round_)
    return round_


def cancel_round(session: Session, project: Project) -> Round:
    """Stops the latest round while it is queued or running; a worker still computing it
    drops its result (worker.rounds stores only into a running round)."""
    round_ = session.scalar(
        select(Round).where(Round.project_id == project.id).order_by(Round.number.desc()).limit(1)
        .with_for_update(key_share=True))
    if round_ is None or round_.state not in ("queued", "running"):
        raise Conflict("only a queued or running round can be cancelled")
    round_.state, round_.progress = "cancelled", {"phase": "cancelled"}
    session.commit()
    return round_


def labels_per_class(session: Session, project: Project) -> dict[str, int]:
    counts = dict(
        session.execute(
            select(ProjectClass.name, func.count(Label.id))
            .join(Label, Label.class_id == ProjectClass.id)
            .join(Image, Image.id == Label.image_id)
            .where(Label.project_id == project.id, is_current(), Image.split == "pool")
            .group_by(ProjectClass.name)
        ).all()
    )
    return {cls.name: counts.get(cls.name, 0) for cls in project.classes}


def progress(session: Session, project: Project) -> dict:
    rounds = session.scalars(select(Round).where(Round.project_id == project.id).order_by(Round.number)).all()
    labeled = count_pool(session, project, labeled=True)
    step = None
    current = open_round(session, project)
    if current is not None:
        done = session.scalar(
            select(func.count(Label.id)).where(Label.round_id == current.id, is_current())
        ) or 0
        step = {"round": current.number, "labeled": done, "size": current.n_selected}
    return {
        "state": project.state,
        "pool_size": count_pool(session, project),
        "test_size": session.scalar(
            select(func.count(Image.id)).where(Image.project_id == project.id, Image.split == "test")
        ) or 0,
        "budget": project.budget,
        "labeled": labeled,
        "budget_used": labeled / project.budget if project.budget else None,
        "step": step,
        "labels_per_class": labels_per_class(session, project),
        "current_round": rounds[-1] if rounds else None,
        "rounds": [
            {"number": r.number, "state": r.state, "n_labels": r.n_labels, "n_selected": r.n_selected,
             "aca": r.metrics.get("aca"), "mca": r.metrics.get("mca"), "queue_empty_s": r.queue_empty_s}
            for r in rounds
        ],
    }
