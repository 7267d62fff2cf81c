"""The annotators' routes: the queue, leasing the next cell, labels, undo, export."""
import csv
import re
import io
import json

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend.api.deps import Annotator, AnyUser, ProjectDep, SessionDep
from backend.db.models import utcnow
from backend.schemas import LabelIn, LabelOut, LeasedCell, NextCell, SelectionOut
from backend.services import labeling
from backend.services.labeling import is_leased, latest_round
from backend.services.rounds import dispatch_round

router = APIRouter(tags=["labeling"])


@router.get("/projects/{project_id}/queue", response_model=list[SelectionOut])
def get_queue(project: ProjectDep, session: SessionDep, _user: AnyUser):
    """The cells of the current step, in rank order, with their state."""
    now = utcnow()
    return [
        SelectionOut(
            image_id=e.selection.image_id, filename=e.selection.image.filename, round=latest_round(session, project).number,
            rank=e.selection.rank, score=e.selection.score, details=e.selection.details,
            status="labeled" if e.label else ("leased" if is_leased(e.selection, now) else "queued"),
            lease_expires_at=e.selection.lease_expires_at if is_leased(e.selection, now) else None,
        )
        for e in labeling.queue_entries(session, project)
    ]


@router.post("/projects/{project_id}/queue/next", response_model=NextCell)
def next_cell(project: ProjectDep, session: SessionDep, user: Annotator):
    """Leases the next cell to the caller (the same one again while their lease holds).
    `cell` is null when the queue is empty; `message` says why."""
    selection = labeling.lease_next_cell(session, project, user)
    round_ = latest_round(session, project)
    if selection is None:
        if round_ is not None and round_.state in ("queued", "running"):
            message = f"round {round_.number} is being computed; the next cells arrive when it is done"
        elif round_ is not None and round_.state == "failed":
            message = f"round {round_.number} failed: {round_.error}; an admin can retry it"
        else:
            message = "every queued cell is leased or labeled"
        return NextCell(cell=None, message=message, round_state=round_ and round_.state)
    return NextCell(
        cell=LeasedCell(
            image_id=selection.image_id, filename=selection.image.filename,
            image_url=f"/api/projects/{project.id}/images/{selection.image_id}/file",
            round=round_.number, rank=selection.rank, score=selection.score, details=selection.details,
            lease_expires_at=selection.lease_expires_at,
        ),
        message="leased",
        round_state=round_.state,
    )


def _label_out(label, project, session) -> LabelOut:
    from backend.db.models import Round, User

    round_ = session.get(Round, label.round_id) if label.round_id else None
    return LabelOut(
        id=label.id, image_id=label.image_id, class_name=next(c.name for c in project.classes if c.id == label.class_id),
        username=session.get(User, label.user_id).username, round=round_.number if round_ else None,
        duration_ms=label.duration_ms, created_at=label.created_at,
        retracted_at=label.retracted_at, superseded_at=label.superseded_at,
    )


@router.post("/projects/{project_id}/labels", response_model=LabelOut, status_code=201)
def submit_label(body: LabelIn, project: ProjectDep, session: SessionDep, user: Annotator):
    """Labels a queued cell (or relabels one's own labeled cell; the old label is kept)."""
    label, new_round = labeling.submit_label(session, project, user, body.image_id, body.class_name, body.duration_ms)
    if new_round is not None:
        dispatch_round(new_round)
    return _label_out(label, project, session)


@router.post("/projects/{project_id}/labels/undo", response_model=LabelOut)
def undo_label(project: ProjectDep, session: SessionDep, user: Annotator):
    """Retracts the caller's last label while its step is open; the cell is leased back to them."""
    return _label_out(labeling.undo_last_label(session, project, user), project, session)


EXPORT_FIELDS = ["image_id", "filename", "content_hash", "class_name", "username", "round", "duration_ms",
                 "created_at", "retracted_at", "superseded_at"]


@router.get("/projects/{project_id}/labels/export")
def export_labels(
    project: ProjectDep, session: SessionDep, _user: AnyUser,
    format: str = Query("csv", pattern="^(csv|json)$"),
    history: bool = Query(False, description="include retracted and superseded labels"),
):
    rows = [
        {
            "image_id": image.id, "filename": image.filename, "content_hash": image.content_hash,
            "class_name": class_name, "username": username, "round": round_number,
            "duration_ms": label.duration_ms, "created_at": label.created_at.isoformat(),
            "retracted_at": label.retracted_at and label.retracted_at.isoformat(),
            "superseded_at": label.superseded_at and label.superseded_at.isoformat(),
        }
        for label, image, class_name, username, round_number in labeling.labels_for_export(session, project, history)
    ]
    filename = re.sub(r"[^A-Za-z0-9._-]+", "_", project.name) + f"-labels.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if format == "json":
        return Response(json.dumps(rows), media_type="application/json", headers=headers)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)
