"""Query predicates and updates that the API's services and the workers both use."""

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session

from backend.core.db.models import Image, Label, PoolClustering, Round, Selection
from backend.core.jobs import ACTIVE, JobState


def is_current(label=Label):
    return and_(label.retracted_at.is_(None), label.superseded_at.is_(None))


def current_label_exists(image_id=Image.id):
    """SQL condition: the image (`image_id`, Image.id by default, of the outer query) has a current label."""
    return exists(select(Label.id).where(Label.image_id == image_id, is_current()))


def mark_labeled_cells(session: Session, round_: Round) -> None:
    """For a round being stored: sets `labeled` on its selections whose cell was labeled while
    it was computed (from the previous round's reserve). The cells' unlabeled selections in
    earlier rounds are written first (a no-op UPDATE that gives each row a new version), so a
    label being submitted for one of them is committed before the labels are read here, and one
    whose statement began before this round was stored finds its selection row changed and is
    run again with a fresh view (backend.services.annotating), which marks this round's
    selection itself."""
    new_cells = select(Selection.image_id).where(Selection.round_id == round_.id)
    earlier = (
        select(Selection.id)
        .join(Round, Round.id == Selection.round_id)
        .where(
            Round.project_id == round_.project_id,
            Selection.round_id != round_.id,
            Selection.labeled.is_(False),
            Selection.image_id.in_(new_cells),
        )
    )
    session.execute(
        update(Selection)
        .where(Selection.id.in_(earlier), Selection.labeled.is_(False))
        .values(labeled=Selection.labeled)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Selection)
        .where(Selection.round_id == round_.id, current_label_exists(Selection.image_id))
        .values(labeled=True)
        .execution_options(synchronize_session=False)
    )


def release_waiting_rounds(project_id: int | None = None):
    """The UPDATE ... RETURNING Round.id that queues each round 0 left waiting for a pool
    pretraining that is over (done or failed), of one project or of all: the worker that stores
    the pretraining runs it for its project, the API's sweeper for all as a backstop."""
    pretraining = select(PoolClustering.id).where(
        PoolClustering.project_id == Round.project_id, PoolClustering.state.in_(ACTIVE)
    )
    condition = [Round.state == JobState.WAITING, ~pretraining.exists()]
    if project_id is not None:
        condition.append(Round.project_id == project_id)
    return (
        update(Round)
        .where(*condition)
        .values(state=JobState.QUEUED, lease_expires_at=None, progress={"phase": "queued"})
        .returning(Round.id)
        .execution_options(synchronize_session=False)
    )
