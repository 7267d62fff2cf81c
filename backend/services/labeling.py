"""The annotators' side: the queue, leases, labels, undo, and what they may see of a cell.

The queue is the open round's step: its selections below rank n_selected whose cell has no
current label (`Selection.labeled`, written with each label and undo). While the next round
is computed it serves the previous round's reserve (the next-ranked cells), so annotators do
not wait for the workers. A lease is taken with a
compare-and-set UPDATE, so two annotators never hold the same cell, on PostgreSQL and SQLite
alike; a label takes the cell's selection row first, so a lease and a label never cross.
Labels are never deleted (see Label)."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.core.db.models import CellNote, Image, Label, Project, ProjectClass, Round, Selection, User, utcnow
from backend.core.errors import Conflict, Forbidden, Invalid
from backend.core.jobs import ACTIVE, JobState
from backend.core.outbox import enqueue
from backend.core.queries import current_label_exists, is_current
from backend.core.settings import get_settings
from backend.schemas import SelectionOut
from backend.services.projects import count_labeled, image_of_project, project_image


def lease_expiry(now: datetime) -> datetime:
    """When a lease taken (or renewed) at `now` ends."""
    return now + timedelta(seconds=get_settings().lease_seconds)


def is_leased(selection: Selection, now: datetime) -> bool:
    return selection.leased_by_id is not None and selection.lease_expires_at is not None and selection.lease_expires_at > now


def latest_round(session: Session, project: Project) -> Round | None:
    return session.scalar(select(Round).where(Round.project_id == project.id).order_by(Round.number.desc()).limit(1))


def open_round(session: Session, project: Project) -> Round | None:
    """The round whose step annotators are labeling now, if any."""
    round_ = latest_round(session, project)
    return round_ if round_ is not None and round_.state == JobState.DONE and round_.n_selected else None


@dataclass
class QueueState:
    latest: Round | None  # the project's newest round
    round: Round | None = None  # the round whose cells the queue serves, if any
    reserve: bool = False  # its reserve, while `latest` is computed; else its step


def queue_state(session: Session, project: Project) -> QueueState:
    """Which cells the queue serves: the open round's step or, while the next round is queued
    or running, the previous round's reserve. No reserve in the budget's last step: labels
    beyond what the next round planned for would overrun the budget."""
    latest = latest_round(session, project)
    if latest is None:
        return QueueState(None)
    if latest.state == JobState.DONE:
        return QueueState(latest, latest if latest.n_selected else None)
    if latest.state not in ACTIVE or latest.number == 0:
        return QueueState(latest)
    previous = session.scalar(select(Round).where(Round.project_id == project.id, Round.number == latest.number - 1))
    if previous is None or previous.state != JobState.DONE:
        return QueueState(latest)
    if count_labeled(session, project) + (project.step_size or 0) >= (project.budget or 0):
        return QueueState(latest)
    return QueueState(latest, previous, reserve=True)


def served_part(round_: Round, reserve: bool):
    """SQL condition: the selection is in the round's step (reserve False) or its reserve."""
    return Selection.rank >= round_.n_selected if reserve else Selection.rank < round_.n_selected


def unlabeled_selections(round_: Round, reserve: bool = False):
    return select(Selection).where(
        Selection.round_id == round_.id, served_part(round_, reserve), Selection.labeled.is_(False)
    )


def note_empty_queue(session: Session, latest: Round | None) -> None:
    """Marks when annotators first found nothing to label while the latest round was computed:
    the round's queue_empty_s, the time they waited for it."""
    if latest is not None and latest.state in ACTIVE and latest.queue_empty_since is None:
        session.execute(
            update(Round).where(Round.id == latest.id, Round.queue_empty_since.is_(None)).values(queue_empty_since=utcnow())
        )
        session.commit()


@dataclass
class QueueEntry:
    selection: Selection
    label: str | None  # the class of the cell's current label


def queue_entries(session: Session, project: Project) -> tuple[Round | None, list[QueueEntry]]:
    """The served round and every selection of the part it serves (step or reserve), queued,
    leased or labeled, in rank order."""
    queue = queue_state(session, project)
    round_ = queue.round
    if round_ is None:
        return None, []
    selections = session.scalars(
        select(Selection).where(Selection.round_id == round_.id, served_part(round_, queue.reserve)).order_by(Selection.rank)
    )
    labels = dict(
        session.execute(
            select(Label.image_id, ProjectClass.name)
            .join(ProjectClass, ProjectClass.id == Label.class_id)
            .join(Selection, Selection.image_id == Label.image_id)
            .where(Selection.round_id == round_.id, is_current())
        ).all()
    )
    return round_, [QueueEntry(s, labels.get(s.image_id)) for s in selections]


def labels_blind(project: Project, user: User) -> bool:
    """Whether the caller labels blind: an annotator of a "label first, then reveal" project
    sees no hints of a cell (the strategy's details, its relevance maps) until it is labeled."""
    return project.reveal_after_label and user.role == "annotator"


def selection_out(
    project: Project, user: User, round_: Round, selection: Selection, label: str | None, now: datetime
) -> SelectionOut:
    """A selection as the caller may see it: `label` is the class of the cell's current label."""
    leased = is_leased(selection, now)
    return SelectionOut(
        image_id=selection.image_id,
        filename=selection.image.filename,
        round=round_.number,
        rank=selection.rank,
        score=selection.score,
        details={} if label is None and labels_blind(project, user) else selection.details,
        label=label,
        status="labeled" if label is not None else ("leased" if leased else "queued"),
        lease_expires_at=selection.lease_expires_at if leased else None,
        reserve=selection.rank >= round_.n_selected,
    )


def check_maps_visible(session: Session, project: Project, user: User, image: Image) -> None:
    """Raises Forbidden for a blind annotator (labels_blind) and a cell with no label yet."""
    if labels_blind(project, user) and not session.scalar(select(current_label_exists(image.id))):
        raise Forbidden(
            f"the relevance maps of image {image.id} are hidden until it is labeled: "
            f"project {project.name!r} labels first, then reveals"
        )


def lease_next_cell(session: Session, project: Project, user: User) -> tuple[Selection | None, QueueState]:
    """The annotator's leased cell, or the best-ranked free one leased to them now, and the
    queue it came from. No cell when the queue is empty (all leased or labeled, or the next
    round is computing and its reserve is used up)."""
    if project.state != "active":
        raise Conflict(
            f"project {project.name!r} is {project.state}: "
            + ("start it first" if project.state == "draft" else "its budget is spent")
        )
    state = queue_state(session, project)
    selection = _lease_in(session, state.round, state.reserve, user) if state.round is not None else None
    if selection is None:
        note_empty_queue(session, state.latest)
    return selection, state


def _lease_in(session: Session, round_: Round, reserve: bool, user: User) -> Selection | None:
    now = utcnow()
    expires = lease_expiry(now)
    queue = unlabeled_selections(round_, reserve)
    held = session.scalar(
        queue.where(Selection.leased_by_id == user.id, Selection.lease_expires_at > now).order_by(Selection.rank).limit(1)
    )
    if held is not None:
        held.lease_expires_at = expires
        session.commit()
        return held
    skipped_by_me = exists(
        select(CellNote.id).where(
            CellNote.image_id == Selection.image_id, CellNote.round_id == round_.id, CellNote.user_id == user.id
        )
    )
    for skipped in (~skipped_by_me, skipped_by_me):  # the cells the caller skipped come last
        taken = _take_best(session, queue.where(skipped), user, now, expires)
        if taken is not None:
            session.commit()
            return taken
    return None


def _take_best(session: Session, candidates, user: User, now: datetime, expires: datetime) -> Selection | None:
    """Leases the best-ranked free cell of `candidates` in one compare-and-set UPDATE. On
    PostgreSQL rows that other transactions are leasing or labeling are skipped, not waited
    for, so concurrent annotators each take a different cell at once. A row labeled and
    committed since the statement began is seen in its new version, so `labeled` belongs to
    the conditions rechecked on it (a join with `labels` would be read from the old snapshot)."""
    free = and_(Selection.labeled.is_(False), or_(Selection.leased_by_id.is_(None), Selection.lease_expires_at <= now))
    best = candidates.where(free).with_only_columns(Selection.id).order_by(Selection.rank).limit(1)
    return session.scalar(
        update(Selection)
        .where(Selection.id == best.with_for_update(skip_locked=True).scalar_subquery(), free)
        .values(leased_by_id=user.id, leased_at=now, lease_expires_at=expires)
        .returning(Selection)
    )


def _class_by_name(project: Project, name: str) -> ProjectClass:
    for cls in project.classes:
        if cls.name == name:
            return cls
    names = ", ".join(c.name for c in project.classes)
    raise Invalid(f"project {project.name!r} has no class {name!r}; its classes are: {names}")


def submit_label(
    session: Session,
    project: Project,
    user: User,
    image_id: int,
    class_name: str,
    duration_ms: int | None = None,
    after_reveal: bool = False,
) -> tuple[Label, Round | None]:
    """Records a label and returns it with the round it opened (and sent to the workers), if it
    completed a step (annotating.py does the same in one statement on PostgreSQL).
    A cell must be queued (and not leased by someone else); a labeled cell may be
    relabeled by its annotator or an admin, which keeps the old label as history.
    In a "label first, then reveal" project the first label is blind (hints_seen False);
    `after_reveal` records the annotator's answer once they have seen the hints."""
    cls = _class_by_name(project, class_name)
    image, previous = _image_and_current_label(session, project, image_id)
    now = utcnow()
    if after_reveal and (previous is None or previous.user_id != user.id or previous.hints_seen):
        raise Conflict(f"there is no blind label of yours on image {image_id} to revise after the reveal")
    if previous is not None:
        if previous.user_id != user.id and user.role != "admin":
            raise Conflict(f"image {image_id} was labeled by another annotator; only they or an admin can relabel it")
        previous.superseded_at = now
        session.flush()
        label = Label(
            project_id=project.id,
            image_id=image.id,
            class_id=cls.id,
            user_id=user.id,
            round_id=previous.round_id,
            duration_ms=duration_ms,
        )
    else:
        selection = _queued_selection(session, project, user, image.id, now)
        if selection is None:
            raise Conflict(f"image {image_id} is not in the labeling queue")
        if (
            selection.leased_by_id not in (None, user.id)
            and selection.lease_expires_at is not None
            and selection.lease_expires_at > now
        ):
            raise Conflict(
                f"image {image_id} is leased to another annotator until {selection.lease_expires_at:%H:%M:%S} UTC"
            )
        if duration_ms is None and selection.leased_by_id == user.id and selection.leased_at:
            duration_ms = int((now - selection.leased_at).total_seconds() * 1000)
        label = Label(
            project_id=project.id,
            image_id=image.id,
            class_id=cls.id,
            user_id=user.id,
            round=session.get(Round, selection.round_id),
            duration_ms=duration_ms,
            hints_seen=not project.reveal_after_label,
        )
    session.add(label)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"image {image_id} was labeled by someone else a moment ago") from None
    new_round = None
    if previous is None:  # the cell leaves the queue: each of its selections is labeled, none leased
        new_round = _take_off_step(session, image.id)
        session.execute(
            update(Selection)
            .where(Selection.image_id == image.id)
            .values(labeled=True, leased_by_id=None, leased_at=None, lease_expires_at=None)
        )
    session.commit()
    if new_round is not None:
        enqueue(Round, new_round.id)
    return label, new_round


def _take_off_step(session: Session, image_id: int) -> Round | None:
    """For a cell's first label: takes it off `open_cells` of the open round whose step holds it
    and, when that was the step's last cell, adds the next round (once: a concurrent twin hits
    the unique (project, number) key and backs off). The UPDATE of the round row serialises the
    step's last labels: each one that waited re-reads the count."""
    in_step = exists(
        select(Selection.id).where(
            Selection.round_id == Round.id,
            Selection.image_id == image_id,
            Selection.labeled.is_(False),
            Selection.rank < Round.n_selected,
        )
    )
    steps = session.execute(
        update(Round)
        .where(Round.state == JobState.DONE, in_step)
        .values(open_cells=Round.open_cells - 1)
        .returning(Round.project_id, Round.number, Round.open_cells)
        .execution_options(synchronize_session=False)
    ).all()
    for project_id, number, open_cells in steps:
        if open_cells == 0:
            try:
                with session.begin_nested():
                    next_round = Round(project_id=project_id, number=number + 1)
                    session.add(next_round)
                return next_round
            except IntegrityError:
                return None
    return None


def _image_and_current_label(session: Session, project: Project, image_id: int) -> tuple[Image, Label | None]:
    row = session.execute(
        select(Image, Label).outerjoin(Label, and_(Label.image_id == Image.id, is_current())).where(Image.id == image_id)
    ).first()
    image, label = row if row is not None else (None, None)
    return image_of_project(project, image_id, image), label


def _queued_selection(
    session: Session,
    project: Project,
    user: User,
    image_id: int,
    now: datetime,
) -> Selection | None:
    """The cell's selection in the part of the queue served now or, for a cell the user
    leased before the queue moved on (a reserve cell when the next round opened), that lease.
    The selection's row stays locked until the label is committed, so no lease is taken
    meanwhile."""
    queue = queue_state(session, project)
    selection = (
        session.scalar(
            select(Selection)
            .where(
                Selection.round_id == queue.round.id, Selection.image_id == image_id, served_part(queue.round, queue.reserve)
            )
            .with_for_update(of=Selection)
        )
        if queue.round is not None
        else None
    )
    return selection or session.scalar(
        select(Selection)
        .join(Round, Round.id == Selection.round_id)
        .where(
            Round.project_id == project.id,
            Selection.image_id == image_id,
            Selection.leased_by_id == user.id,
            Selection.lease_expires_at > now,
        )
        .order_by(Round.number.desc())
        .limit(1)
        .with_for_update(of=Selection)
    )


def hints_for(session: Session, label: Label) -> dict | None:
    """What the strategy said about the labeled cell when it queued it."""
    return session.scalar(
        select(Selection.details).where(Selection.round_id == label.round_id, Selection.image_id == label.image_id)
    )


def skip_cell(session: Session, project: Project, user: User, image_id: int, kind: str, note: str) -> CellNote:
    """Returns a queued cell to the queue with the annotator's note; they get other cells first."""
    image = project_image(session, project, image_id)
    queue = queue_state(session, project)
    selection = (
        session.scalar(unlabeled_selections(queue.round, queue.reserve).where(Selection.image_id == image.id))
        if queue.round is not None
        else None
    )
    if selection is None:
        raise Conflict(f"image {image_id} is not in the labeling queue")
    if selection.leased_by_id not in (None, user.id) and selection.lease_expires_at > utcnow():
        raise Conflict(f"image {image_id} is leased to another annotator")
    selection.leased_by_id = selection.leased_at = selection.lease_expires_at = None
    cell_note = CellNote(
        project_id=project.id, image_id=image.id, round_id=selection.round_id, user_id=user.id, kind=kind, note=note
    )
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
    queue = queue_state(session, project)
    selection = (
        session.scalar(
            select(Selection).where(
                Selection.round_id == queue.round.id,
                Selection.image_id == label.image_id,
                served_part(queue.round, queue.reserve),
            )
        )
        if queue.round is not None
        else None
    )
    if selection is None:
        raise Conflict("your last label closed its step and the next round has started from it; relabel the cell instead")
    now = utcnow()
    label.retracted_at = now
    if not queue.reserve:  # the cell is back in the open step
        session.execute(
            update(Round)
            .where(Round.id == selection.round_id)
            .values(open_cells=Round.open_cells + 1)
            .execution_options(synchronize_session=False)
        )
    session.execute(update(Selection).where(Selection.image_id == label.image_id).values(labeled=False))
    selection.leased_by_id, selection.leased_at = user.id, now
    selection.lease_expires_at = lease_expiry(now)
    session.commit()
    return label
