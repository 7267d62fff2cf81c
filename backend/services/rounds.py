"""The budget loop (thesis Table 2): round 0 queues the first k cells; when a step's cells
are all labeled, the next round fine-tunes, evaluates and queues the next m cells, until
the budget B is spent. Rounds are computed by Celery workers; the API never waits."""

import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.db.models import Image, Label, PoolClustering, Project, ProjectClass, Round
from backend.core.errors import Conflict
from backend.core.jobs import ACTIVE, ClusteringConfig, JobState
from backend.core.outbox import enqueue
from backend.core.queries import is_current
from backend.core.settings import get_settings
from backend.services.clustering import active_clustering, new_clustering
from backend.services.labeling import latest_round, open_round
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
    pretraining = pool_pretraining(session, project, pool_size)
    round_ = Round(project_id=project.id, number=0)
    if pretraining is not None:  # round 0 waits for it; the worker storing it (or the sweeper) sends round 0
        round_.state, round_.progress = JobState.WAITING, {"phase": "waiting for the pool's pretraining"}
    session.add(round_)
    session.commit()
    if pretraining is not None and pretraining.state == JobState.QUEUED:
        enqueue(PoolClustering, pretraining.id)
    else:
        enqueue(Round, round_.id)
    return round_


def pool_pretraining(session: Session, project: Project, pool_size: int) -> PoolClustering | None:
    """The pretraining without labels that round 0 must wait for (a pool clustering of the
    contrastive kind that makes the start model), queued here unless one is already queued or
    running; None when the project has a start model or asks for no pretraining (0 epochs)."""
    epochs = project.model_settings.get("pool_pretraining_epochs")
    epochs = get_settings().pool_pretraining_epochs if epochs is None else epochs
    if project.start_model_id is not None or epochs == 0 or pool_size < len(project.classes):
        return None
    active = active_clustering(session, project)
    if active is not None:
        return active if active.config.get("representation") == "contrastive" and active.config.get("start_model") else None
    pretraining = new_clustering(
        project, ClusteringConfig(representation="contrastive", pretext_epochs=epochs, start_model=True)
    )
    session.add(pretraining)
    return pretraining


def rerun_round(session: Session, project: Project) -> Round:
    """Admin's trigger: re-sends the latest round when it failed, was cancelled or is stuck in the queue."""
    round_ = latest_round(session, project)
    if round_ is None or round_.state not in (JobState.QUEUED, JobState.FAILED, JobState.CANCELLED):
        raise Conflict("only a queued, failed or cancelled round can be triggered again")
    round_.state, round_.error, round_.lease_expires_at = JobState.QUEUED, None, None
    session.commit()
    enqueue(Round, round_.id)
    return round_


def cancel_round(session: Session, project: Project) -> Round:
    """Stops the latest round while it is queued or running; a worker still computing it
    drops its result (worker.rounds stores only into a running round)."""
    round_ = session.scalar(
        select(Round)
        .where(Round.project_id == project.id)
        .order_by(Round.number.desc())
        .limit(1)
        .with_for_update(key_share=True)
    )
    if round_ is None or round_.state not in ACTIVE:
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
        done = session.scalar(select(func.count(Label.id)).where(Label.round_id == current.id, is_current())) or 0
        step = {"round": current.number, "labeled": done, "size": current.n_selected}
    return {
        "state": project.state,
        "pool_size": count_pool(session, project),
        "test_size": session.scalar(
            select(func.count(Image.id)).where(Image.project_id == project.id, Image.split == "test")
        )
        or 0,
        "budget": project.budget,
        "labeled": labeled,
        "budget_used": labeled / project.budget if project.budget else None,
        "step": step,
        "labels_per_class": labels_per_class(session, project),
        "current_round": rounds[-1] if rounds else None,
        "rounds": [
            {
                "number": r.number,
                "state": r.state,
                "n_labels": r.n_labels,
                "n_selected": r.n_selected,
                "aca": r.metrics.get("aca"),
                "mca": r.metrics.get("mca"),
                "queue_empty_s": r.queue_empty_s,
            }
            for r in rounds
        ],
    }
