"""The annotators' routes: the queue, leasing the next cell, labels, undo, export."""

import csv
import io
import json
import re

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend.api.deps import Admin, Annotator, AnyUser, ProjectDep, SessionDep
from backend.core.db.models import Label, User, utcnow
from backend.core.jobs import ACTIVE, JobState
from backend.schemas import LabelIn, LabelOut, LeasedCell, NextCell, SelectionOut, SkipIn
from backend.services import labeling, stats
from backend.services.labeling import is_leased

router = APIRouter(tags=["labeling"])


@router.get("/projects/{project_id}/queue", response_model=list[SelectionOut])
def get_queue(project: ProjectDep, session: SessionDep, user: AnyUser):
    """The cells of the current step, in rank order, with their state. In a "label first, then
    reveal" project annotators get no hints here either."""
    now = utcnow()
    hidden = project.reveal_after_label and user.role == "annotator"
    round_, entries = labeling.queue_entries(session, project)
    return [
        SelectionOut(
            image_id=e.selection.image_id,
            filename=e.selection.image.filename,
            round=round_.number,
            rank=e.selection.rank,
            score=e.selection.score,
            details={} if hidden else e.selection.details,
            status="labeled" if e.label else ("leased" if is_leased(e.selection, now) else "queued"),
            lease_expires_at=e.selection.lease_expires_at if is_leased(e.selection, now) else None,
            reserve=e.selection.rank >= round_.n_selected,
        )
        for e in entries
    ]


@router.post("/projects/{project_id}/queue/next", response_model=NextCell)
def next_cell(project: ProjectDep, session: SessionDep, user: Annotator):
    """Leases the next cell to the caller (the same one again while their lease holds).
    `cell` is null when the queue is empty; `message` says why."""
    selection, queue = labeling.lease_next_cell(session, project, user)
    round_ = queue.latest
    if selection is None:
        if round_ is not None and round_.state in ACTIVE:
            message = f"round {round_.number} is being computed; the next cells arrive when it is done"
        elif round_ is not None and round_.state == JobState.FAILED:
            message = f"round {round_.number} failed: {round_.error}; an admin can retry it"
        else:
            message = "every queued cell is leased or labeled"
        return NextCell(cell=None, message=message, round_state=round_ and round_.state)
    hidden = project.reveal_after_label
    picked_by = queue.round
    return NextCell(
        cell=LeasedCell(
            image_id=selection.image_id,
            filename=selection.image.filename,
            image_url=f"/api/projects/{project.id}/images/{selection.image_id}/file",
            round=picked_by.number,
            rank=selection.rank,
            score=selection.score,
            details={} if hidden else selection.details,
            hints_hidden=hidden,
            lease_expires_at=selection.lease_expires_at,
            reserve=selection.rank >= picked_by.n_selected,
        ),
        message="leased",
        round_state=round_.state,
    )


def _label_out(label: Label, project, session, hints: dict | None = None) -> LabelOut:
    round_ = label.round
    return LabelOut(
        id=label.id,
        image_id=label.image_id,
        class_name=next(c.name for c in project.classes if c.id == label.class_id),
        username=session.get(User, label.user_id).username,
        round=round_.number if round_ else None,
        duration_ms=label.duration_ms,
        created_at=label.created_at,
        retracted_at=label.retracted_at,
        superseded_at=label.superseded_at,
        hints_seen=label.hints_seen,
        hints=hints,
    )


@router.post("/projects/{project_id}/labels", response_model=LabelOut, status_code=201)
def submit_label(body: LabelIn, project: ProjectDep, session: SessionDep, user: Annotator):
    """Labels a queued cell (or relabels one's own labeled cell; the old label is kept).
    After a blind label of a "label first, then reveal" project the response carries the hints."""
    label, _ = labeling.submit_label(
        session, project, user, body.image_id, body.class_name, body.duration_ms, body.after_reveal
    )
    return _label_out(label, project, session, labeling.hints_for(session, label) if not label.hints_seen else None)


@router.post("/projects/{project_id}/queue/skip")
def skip_cell(body: SkipIn, project: ProjectDep, session: SessionDep, user: Annotator) -> dict:
    """Returns the cell to the queue with a note (skip or unsure); the caller gets other cells first."""
    note = labeling.skip_cell(session, project, user, body.image_id, body.reason, body.note)
    return {"released": True, "image_id": note.image_id, "reason": note.kind}


@router.get("/projects/{project_id}/stats")
def annotator_stats(project: ProjectDep, session: SessionDep, _admin: Admin) -> dict:
    """Throughput per annotator, agreement on cells labeled twice, changes after a reveal."""
    return stats.annotator_stats(session, project)


@router.post("/projects/{project_id}/labels/undo", response_model=LabelOut)
def undo_label(project: ProjectDep, session: SessionDep, user: Annotator):
    """Retracts the caller's last label while its step is open; the cell is leased back to them."""
    return _label_out(labeling.undo_last_label(session, project, user), project, session)


EXPORT_FIELDS = [
    "image_id",
    "filename",
    "content_hash",
    "class_name",
    "username",
    "round",
    "duration_ms",
    "created_at",
    "retracted_at",
    "superseded_at",
]


@router.get("/projects/{project_id}/labels/export")
def export_labels(
    project: ProjectDep,
    session: SessionDep,
    _user: AnyUser,
    format: str = Query("csv", pattern="^(csv|json)$"),
    history: bool = Query(False, description="include retracted and superseded labels"),
):
    rows = [
        {
            "image_id": image.id,
            "filename": image.filename,
            "content_hash": image.content_hash,
            "class_name": class_name,
            "username": username,
            "round": round_number,
            "duration_ms": label.duration_ms,
            "created_at": label.created_at.isoformat(),
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
