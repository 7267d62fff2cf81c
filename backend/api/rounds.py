"""Rounds and their ranked selections."""

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import case, func, select

from backend.api.deps import Admin, AnyUser, ProjectDep, SessionDep
from backend.core.db.models import Image, Label, ProjectClass, Round, Selection, utcnow
from backend.core.jobs import JobState
from backend.core.queries import is_current
from backend.schemas import RoundLabels, RoundOut, SelectionOut
from backend.services import rounds
from backend.services.labeling import selection_out

router = APIRouter(tags=["rounds"])


@router.get("/projects/{project_id}/rounds", response_model=list[RoundOut])
def list_rounds(project: ProjectDep, session: SessionDep):
    """Every round, with the labels its picks got (`labeled`): its step's and its reserve's."""
    rounds = session.scalars(select(Round).where(Round.project_id == project.id).order_by(Round.number)).all()
    return _with_labels(session, rounds)


def _round(session, project, number: int) -> Round:
    round_ = session.scalar(select(Round).where(Round.project_id == project.id, Round.number == number))
    if round_ is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project.name!r} has no round {number}")
    return round_


@router.get("/projects/{project_id}/rounds/{number}", response_model=RoundOut)
def get_round(number: int, project: ProjectDep, session: SessionDep):
    return _with_labels(session, [_round(session, project, number)])[0]


def _with_labels(session, rounds: list[Round]) -> list[RoundOut]:
    """The rounds with the current labels of their picks, counted by the round that queued each
    cell (Label.round_id): a step's cells, and its reserve's labeled while the next round was
    computed; and how many labeled picks the round's model had predicted otherwise."""
    ids = [r.id for r in rounds]
    in_step = Selection.rank < Round.n_selected
    predicted = Selection.details["predicted"].as_integer()
    counts: dict[tuple[int, bool], tuple[int, int, int]] = {}
    reserve_sizes: dict[int, int] = {}
    if ids:
        rows = session.execute(
            select(
                Label.round_id,
                in_step,
                func.count(Label.id),
                func.count(predicted),
                func.coalesce(func.sum(case((predicted != ProjectClass.position, 1), else_=0)), 0),
            )
            .join(Selection, (Selection.round_id == Label.round_id) & (Selection.image_id == Label.image_id))
            .join(Round, Round.id == Label.round_id)
            .join(ProjectClass, ProjectClass.id == Label.class_id)
            .where(Label.round_id.in_(ids), is_current())
            .group_by(Label.round_id, in_step)
        )
        counts = {(round_id, bool(step)): (n, judged, wrong) for round_id, step, n, judged, wrong in rows}
        reserve_sizes = dict(
            session.execute(
                select(Selection.round_id, func.count(Selection.id))
                .join(Round, Round.id == Selection.round_id)
                .where(Selection.round_id.in_(ids), Selection.rank >= Round.n_selected)
                .group_by(Selection.round_id)
            ).all()
        )
    out = []
    for round_ in rounds:
        step, reserve = counts.get((round_.id, True), (0, 0, 0)), counts.get((round_.id, False), (0, 0, 0))
        training = None
        if round_.state == JobState.RUNNING and round_.started_at is not None:
            training = session.scalar(
                select(func.count(Label.id))
                .join(Image, Image.id == Label.image_id)
                .where(
                    Label.project_id == round_.project_id,
                    Image.split == "pool",
                    Label.created_at <= round_.started_at,
                    is_current(),
                )
            )
        labeled = RoundLabels(
            step=step[0],
            reserve=reserve[0],
            reserve_size=reserve_sizes.get(round_.id, 0),
            judged=step[1] + reserve[1],
            wrong=step[2] + reserve[2],
            training_labels=training,
        )
        out.append(RoundOut.model_validate(round_).model_copy(update={"labeled": labeled}))
    return out


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
