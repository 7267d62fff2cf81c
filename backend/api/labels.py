"""The annotators' routes: the queue, leasing the next cell, labels, undo, export."""

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend.api.deps import Admin, AnnotatorSecret, AnyUser, ProjectDep, SessionDep
from backend.core.db.models import utcnow
from backend.schemas import LabelIn, LabelOut, NextCell, SelectionOut, SkipIn
from backend.services import annotating, exports, labeling, stats

router = APIRouter(tags=["labeling"])


@router.get("/projects/{project_id}/queue", response_model=list[SelectionOut])
def get_queue(project: ProjectDep, session: SessionDep, user: AnyUser):
    """The cells of the current step, in rank order, with their state. In a "label first, then
    reveal" project annotators get no hints of a cell here either before it is labeled."""
    round_, entries = labeling.queue_entries(session, project)
    now = utcnow()
    return [labeling.selection_out(project, user, round_, e.selection, e.label, now) for e in entries]


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
    After a blind label of a "label first, then reveal" project the response carries the hints.
    With `lease_next` it also carries the caller's next cell as `next`, as `queue/next` answers
    it (null in the rare case where `queue/next` refuses although the label was stored)."""
    return await annotating.submit_label(
        secret, project_id, body.image_id, body.class_name, body.duration_ms, body.after_reveal, body.lease_next
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


@router.get("/projects/{project_id}/labels/export")
def export_labels(
    project: ProjectDep,
    session: SessionDep,
    user: AnyUser,
    format: exports.Format = Query("csv"),
    history: bool = Query(False, description="include retracted and superseded labels"),
):
    """The labels as a file. In CSV a text that a spreadsheet would run as a formula (it starts
    with =, +, -, @, a tab or a carriage return) is written after a single quote; JSON is exact."""
    export = exports.export_labels(session, project, user, format, history)
    headers = {"Content-Disposition": f'attachment; filename="{export.filename}"'}
    return Response(export.body, media_type=export.media_type, headers=headers)
