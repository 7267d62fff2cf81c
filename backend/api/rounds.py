"""Rounds and their ranked selections."""

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from backend.api.deps import Admin, ProjectDep, SessionDep
from backend.core.db.models import Label, ProjectClass, Round, Selection, utcnow
from backend.core.queries import is_current
from backend.schemas import RoundOut, SelectionOut
from backend.services import rounds
from backend.services.labeling import is_leased

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
def list_selections(number: int, project: ProjectDep, session: SessionDep):
    """The round's picks, most informative first, with their scores and the strategy's details:
    its step, then its reserve (served while the next round is computed)."""
    round_ = _round(session, project, number)
    now = utcnow()
    rows = session.execute(
        select(Selection, ProjectClass.name)
        .outerjoin(Label, (Label.image_id == Selection.image_id) & is_current())
        .outerjoin(ProjectClass, ProjectClass.id == Label.class_id)
        .where(Selection.round_id == round_.id)
        .order_by(Selection.rank)
    ).all()
    return [
        SelectionOut(
            image_id=s.image_id,
            filename=s.image.filename,
            round=round_.number,
            rank=s.rank,
            score=s.score,
            details=s.details,
            label=label,
            status="labeled" if label else ("leased" if is_leased(s, now) else "queued"),
            lease_expires_at=s.lease_expires_at if is_leased(s, now) else None,
            reserve=s.rank >= round_.n_selected,
        )
        for s, label in rows
    ]


@router.post("/projects/{project_id}/rounds/retry", response_model=RoundOut, status_code=202)
def retry_round(project: ProjectDep, session: SessionDep, _admin: Admin):
    """Sends the latest round to the workers again when it failed or is stuck in the queue."""
    return rounds.rerun_round(session, project)


@router.post("/projects/{project_id}/rounds/cancel", response_model=RoundOut)
def cancel_round(project: ProjectDep, session: SessionDep, _admin: Admin):
    """Cancels the latest round while it is queued or running; retry sends it again."""
    return rounds.cancel_round(session, project)
