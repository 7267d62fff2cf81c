"""The budget loop (thesis Table 2): round 0 queues the first k cells; when a step's cells
are all labeled, the next round fine-tunes, evaluates and queues the next m cells, until
the budget B is spent. Rounds are computed by Celery workers; the API never waits."""
import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db.models import Image, Label, Project, ProjectClass, Round, Selection
from backend.errors import Conflict
from backend.services.jobs import dispatch
from backend.services.labeling import is_current, latest_round, open_round, unlabeled_selections
from backend.services.projects import count_labeled, count_pool, resolve_budget

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
    dispatch(round_)
    return round_


def open_next_round_if_step_done(session: Session, project: Project, round_: Round) -> Round | None:
    """Called after each new label in the step of `round_`, the open round: when its cells are
    all labeled, adds the next round (once: a concurrent twin hits the unique (project, number)
    key and backs off)."""
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


def rerun_round(session: Session, project: Project) -> Round:
    """Admin's trigger: re-sends the latest round when it failed, was cancelled or is stuck in the queue."""
    round_ = latest_round(session, project)
    if round_ is None or round_.state not in ("queued", "failed", "cancelled"):
        raise Conflict("only a queued, failed or cancelled round can be triggered again")
    round_.state, round_.error, round_.lease_expires_at = "queued", None, None
    session.commit()
    dispatch(round_)
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
    labeled = count_labeled(session, project)
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
