"""Rounds and their ranked selections."""

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from backend.api.deps import Admin, AnyUser, ProjectDep, SessionDep
from backend.core.db.models import Label, ProjectClass, Round, Selection, utcnow
from backend.core.queries import is_current
from backend.schemas import RoundOut, SelectionOut
from backend.services import rounds
from backend.services.labeling import selection_out

router = APIRouter(tags=["rounds"])


@router.get("/projects/{project_id}/rounds", response_model=list[RoundOut])
def list_rounds(project: ProjectDep, session: SessionDep):
    return session.scalars(select(Round).where(Round.project_id == project.id).order_by(Round.number)).all()


def _round(session, project, number: int) -> Round:
    round_ = session.scalar(select(Round).where(Round.project_id == project.id, Round.number == number))
    if round_ is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project.name!r} has no round {number}")
    return round_


@router.get("/projects/{project_id}/rounds/{number}", response_model=RoundOut)
def get_round(number: int, project: ProjectDep, session: SessionDep):
    return _round(session, project, number)


@router.get("/projects/{project_id}/rounds/{number}/selections", response_model=list[SelectionOut])
def list_selections(number: int, project: ProjectDep, session: SessionDep, user: AnyUser):
    """The round's picks, most informative first, with their scores and the strategy's details:
    its step, then its reserve (served while the next round is computed). In a "label first,
    then reveal" project annotators get no details of a cell before it is labeled."""
    round_ = _round(session, project, number)
    now = utcnow()
    rows = session.execute(
        select(Selection, ProjectClass.name)
        .outerjoin(Label, (Label.image_id == Selection.image_id) & is_current())
        .outerjoin(ProjectClass, ProjectClass.id == Label.class_id)
        .where(Selection.round_id == round_.id)
        .order_by(Selection.rank)
    ).all()
    return [selection_out(project, user, round_, s, label, now) for s, label in rows]


@router.post("/projects/{project_id}/rounds/retry", response_model=RoundOut, status_code=202)
def retry_round(project: ProjectDep, session: SessionDep, _admin: Admin):
    """Sends the latest round to the workers again when it failed or is stuck in the queue."""
    return rounds.rerun_round(session, project)


@router.post("/projects/{project_id}/rounds/cancel", response_model=RoundOut)
def cancel_round(project: ProjectDep, session: SessionDep, _admin: Admin):
    """Cancels the latest round while it is queued or running; retry sends it again."""
    return rounds.cancel_round(session, project)
