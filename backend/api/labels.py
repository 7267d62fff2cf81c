"""The annotators' routes: the queue, leasing the next cell, labels, undo, export."""

import csv
import io
import json
import re

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend.api.deps import Admin, AnnotatorSecret, AnyUser, ProjectDep, SessionDep
from backend.core.db.models import utcnow
from backend.schemas import LabelIn, LabelOut, NextCell, SelectionOut, SkipIn
from backend.services import annotating, labeling, stats
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


# The four routes an annotator calls per cell are async, with no sync dependency: each is one
# statement on PostgreSQL (backend.services.annotating), which checks the token and the membership
# itself. The rest of the API is sync: its routes are not on the hot path.


@router.post("/projects/{project_id}/queue/next", response_model=NextCell)
async def next_cell(project_id: int, secret: AnnotatorSecret):
    """Leases the next cell to the caller (the same one again while their lease holds).
    `cell` is null when the queue is empty; `message` says why."""
    return await annotating.next_cell(secret, project_id)


@router.post("/projects/{project_id}/labels", response_model=LabelOut, status_code=201)
async def submit_label(project_id: int, body: LabelIn, secret: AnnotatorSecret):
    """Labels a queued cell (or relabels one's own labeled cell; the old label is kept).
    After a blind label of a "label first, then reveal" project the response carries the hints."""
    return await annotating.submit_label(
        secret, project_id, body.image_id, body.class_name, body.duration_ms, body.after_reveal
    )


@router.post("/projects/{project_id}/queue/skip")
async def skip_cell(project_id: int, body: SkipIn, secret: AnnotatorSecret) -> dict:
    """Returns the cell to the queue with a note (skip or unsure); the caller gets other cells first."""
    return await annotating.skip_cell(secret, project_id, body.image_id, body.reason, body.note)


@router.post("/projects/{project_id}/labels/undo", response_model=LabelOut)
async def undo_label(project_id: int, secret: AnnotatorSecret):
    """Retracts the caller's last label while its step is open; the cell is leased back to them."""
    return await annotating.undo_last_label(secret, project_id)


@router.get("/projects/{project_id}/stats")
def annotator_stats(project: ProjectDep, session: SessionDep, _admin: Admin) -> dict:
    """Throughput per annotator, agreement on cells labeled twice, changes after a reveal."""
    return stats.annotator_stats(session, project)


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
