"""The annotators' side: the queue of the open round, leases, labels, undo and export.

The queue is the open round's selections whose cell has no current label. A lease is
taken with a compare-and-set UPDATE, so two annotators never hold the same cell, on
PostgreSQL and SQLite alike. Labels are never deleted (see Label)."""
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db.models import CellNote, Image, Label, Project, ProjectClass, Round, Selection, User, utcnow
from backend.errors import Conflict, Invalid
from backend.services.projects import project_image
from backend.settings import get_settings


def is_current(label=Label):
    return and_(label.retracted_at.is_(None), label.superseded_at.is_(None))


def current_label_exists():
    """SQL condition: the image (Image.id in the outer query) has a current label."""
    return exists(select(Label.id).where(Label.image_id == Image.id, is_current()))


def is_leased(selection: Selection, now: datetime) -> bool:
    return selection.leased_by_id is not None and selection.lease_expires_at > now


def latest_round(session: Session, project: Project) -> Round | None:
    return session.scalar(select(Round).where(Round.project_id == project.id).order_by(Round.number.desc()).limit(1))


def open_round(session: Session, project: Project) -> Round | None:
    """The round whose selections annotators are labeling now, if any."""
    round_ = latest_round(session, project)
    return round_ if round_ is not None and round_.state == "done" and round_.n_selected else None


def unlabeled_selections(round_: Round):
    return (
        select(Selection)
        .join(Image, Image.id == Selection.image_id)
        .where(Selection.round_id == round_.id, ~current_label_exists())
    )


@dataclass
class QueueEntry:
    selection: Selection
    label: Label | None


def queue_entries(session: Session, project: Project) -> list[QueueEntry]:
    """Every selection of the latest round, queued, leased or labeled, in rank order."""
    round_ = latest_round(session, project)
    if round_ is None:
        return []
    selections = session.scalars(select(Selection).where(Selection.round_id == round_.id).order_by(Selection.rank))
    labels = {
        label.image_id: label
        for label in session.scalars(
            select(Label).join(Selection, Selection.image_id == Label.image_id)
            .where(Selection.round_id == round_.id, is_current())
        )
    }
    return [QueueEntry(s, labels.get(s.image_id)) for s in selections]


def lease_next_cell(session: Session, project: Project, user: User) -> Selection | None:
    """The annotator's leased cell, or the best-ranked free one leased to them now.
    None when the queue is empty (all leased or labeled, or the next round is computing)."""
    if project.state != "active":
        raise Conflict(f"project {project.name!r} is {project.state}: " + (
            "start it first" if project.state == "draft" else "its budget is spent"))
    round_ = open_round(session, project)
    if round_ is None:
        return None
    now = utcnow()
    expires = now + timedelta(seconds=get_settings().lease_seconds)
    held = session.scalar(
        unlabeled_selections(round_)
        .where(Selection.leased_by_id == user.id, Selection.lease_expires_at > now)
        .order_by(Selection.rank)
        .limit(1)
    )
    if held is not None:
        held.lease_expires_at = expires
        session.commit()
        return held
    free = or_(Selection.leased_by_id.is_(None), Selection.lease_expires_at <= now)
    skipped_by_me = exists(select(CellNote.id).where(
        CellNote.image_id == Selection.image_id, CellNote.round_id == round_.id, CellNote.user_id == user.id))
    for _ in range(20):  # others may take candidates between our read and our write
        candidates = session.scalars(
            unlabeled_selections(round_).where(free).order_by(skipped_by_me, Selection.rank).limit(5)).all()
        if not candidates:
            return None
        for candidate in candidates:
            taken = session.execute(
                update(Selection)
                .where(Selection.id == candidate.id, free)
                .values(leased_by_id=user.id, leased_at=now, lease_expires_at=expires)
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
            if taken:
                session.refresh(candidate)
                return candidate
    return None


def _class_by_name(project: Project, name: str) -> ProjectClass:
    for cls in project.classes:
        if cls.name == name:
            return cls
    names = ", ".join(c.name for c in project.classes)
    raise Invalid(f"project {project.name!r} has no class {name!r}; its classes are: {names}")


def current_label(session: Session, image_id: int) -> Label | None:
    return session.scalar(select(Label).where(Label.image_id == image_id, is_current()))


def submit_label(
    session: Session, project: Project, user: User, image_id: int, class_name: str,
    duration_ms: int | None = None, after_reveal: bool = False,
) -> tuple[Label, Round | None]:
    """Records a label and returns it with the round it opened, if it completed a step.
    A cell must be queued (and not leased by someone else); a labeled cell may be
    relabeled by its annotator or an admin, which keeps the old label as history.
    In a "label first, then reveal" project the first label is blind (hints_seen False);
    `after_reveal` records the annotator's answer once they have seen the hints."""
    cls = _class_by_name(project, class_name)
    image = project_image(session, project, image_id)
    now = utcnow()
    previous = current_label(session, image.id)
    if after_reveal and (previous is None or previous.user_id != user.id or previous.hints_seen):
        raise Conflict(f"there is no blind label of yours on image {image_id} to revise after the reveal")
    if previous is not None:
        if previous.user_id != user.id and user.role != "admin":
            raise Conflict(f"image {image_id} was labeled by another annotator; only they or an admin can relabel it")
        previous.superseded_at = now
        session.flush()
        label = Label(project_id=project.id, image_id=image.id, class_id=cls.id, user_id=user.id,
                      round_id=previous.round_id, duration_ms=duration_ms)
    else:
        round_ = open_round(session, project)
        selection = round_ and session.scalar(
            select(Selection).where(Selection.round_id == round_.id, Selection.image_id == image.id)
        )
        if selection is None:
            raise Conflict(f"image {image_id} is not in the labeling queue")
        if selection.leased_by_id not in (None, user.id) and selection.lease_expires_at > now:
            raise Conflict(f"image {image_id} is leased to another annotator until {selection.lease_expires_at:%H:%M:%S} UTC")
        if duration_ms is None and selection.leased_by_id == user.id and selection.leased_at:
            duration_ms = int((now - selection.leased_at).total_seconds() * 1000)
        selection.leased_by_id = selection.leased_at = selection.lease_expires_at = None
        label = Label(project_id=project.id, image_id=image.id, class_id=cls.id, user_id=user.id,
                      round_id=round_.id, duration_ms=duration_ms, hints_seen=not project.reveal_after_label)
    session.add(label)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"image {image_id} was labeled by someone else a moment ago") from None
    from backend.services.rounds import open_next_round_if_step_done

    new_round = open_next_round_if_step_done(session, project)
    session.commit()
    return label, new_round


def hints_for(session: Session, label: Label) -> dict | None:
    """What the strategy said about the labeled cell when it queued it."""
    return session.scalar(
        select(Selection.details).where(Selection.round_id == label.round_id, Selection.image_id == label.image_id))


def skip_cell(session: Session, project: Project, user: User, image_id: int, kind: str, note: str) -> CellNote:
    """Returns a queued cell to the queue with the annotator's note; they get other cells first."""
    image = project_image(session, project, image_id)
    round_ = open_round(session, project)
    selection = round_ and session.scalar(
        select(Selection).join(Image, Image.id == Selection.image_id)
        .where(Selection.round_id == round_.id, Selection.image_id == image.id, ~current_label_exists())
    )
    if selection is None:
        raise Conflict(f"image {image_id} is not in the labeling queue")
    if selection.leased_by_id not in (None, user.id) and selection.lease_expires_at > utcnow():
        raise Conflict(f"image {image_id} is leased to another annotator")
    selection.leased_by_id = selection.leased_at = selection.lease_expires_at = None
    cell_note = CellNote(project_id=project.id, image_id=image.id, round_id=round_.id, user_id=user.id,
                         kind=kind, note=note)
    session.add(cell_note)
    session.commit()
    return cell_note


def undo_last_label(session: Session, project: Project, user: User) -> Label:
    """Retracts the annotator's latest label while its step is still open and leases the
    cell back to them. The retracted label stays in the history."""
    label = session.scalar(
        select(Label)
        .where(Label.project_id == project.id, Label.user_id == user.id, is_current())
        .order_by(Label.created_at.desc(), Label.id.desc())
        .limit(1)
    )
    if label is None:
        raise Conflict("there is no label of yours to undo")
    round_ = open_round(session, project)
    selection = round_ and session.scalar(
        select(Selection).where(Selection.round_id == round_.id, Selection.image_id == label.image_id)
    )
    if selection is None:
        raise Conflict("your last label closed its step and the next round has started from it; relabel the cell instead")
    now = utcnow()
    label.retracted_at = now
    selection.leased_by_id, selection.leased_at = user.id, now
    selection.lease_expires_at = now + timedelta(seconds=get_settings().lease_seconds)
    session.commit()
    return label


def labels_for_export(session: Session, project: Project, history: bool = False):
    """(label, image, class name, username, round number) rows, oldest first."""
    query = (
        select(Label, Image, ProjectClass.name, User.username, Round.number)
        .join(Image, Image.id == Label.image_id)
        .join(ProjectClass, ProjectClass.id == Label.class_id)
        .join(User, User.id == Label.user_id)
        .outerjoin(Round, Round.id == Label.round_id)
        .where(Label.project_id == project.id)
        .order_by(Label.created_at, Label.id)
    )
    if not history:
        query = query.where(is_current())
    return session.execute(query).all()
