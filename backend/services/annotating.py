"""The four requests an annotator makes per cell (next, label, undo, skip), each one round trip
to PostgreSQL: one statement that checks the token, the role and the membership, reads which
part of the queue is served (backend.services.labeling.queue_state says the same in Python),
and writes, with data-modifying CTEs, on an async engine (asyncpg) in autocommit, so each
statement is its own transaction. asyncpg prepares each statement once per connection. The
browser's label also leases the next cell in its statement (`lease_next`): one request and one
statement per cell.

The rules are labeling.py's, which stays the one implementation for the rest: the embedded
SQLite database (no data-modifying CTEs, no SKIP LOCKED, one writer) runs those functions as
they are, and so does PostgreSQL for a relabel or an answer after a reveal (rare, several
statements). `_on_sqlite` is the one place that tells the two apart.

A step's last label opens the next round in its own statement: each first label of a step cell
takes one off `rounds.open_cells`, a write of the round row that concurrent labels wait for and
then read again, so exactly one of them sees 0 and inserts the next round."""

import hashlib
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import asyncpg
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, bindparam, column, text
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, OperationalError

from backend.core.db.models import MAX_ID, Project, Round, User, utcnow
from backend.core.db.session import get_async_engine, new_session
from backend.core.errors import Conflict, DomainError, Forbidden, NotFound, Unauthorized
from backend.core.jobs import ACTIVE
from backend.core.outbox import enqueue
from backend.core.settings import get_settings
from backend.schemas import LabelOut, LeasedCell, NextCell
from backend.services import labeling
from backend.services.members import find_visible_project
from backend.services.users import LAST_USED_RESOLUTION, user_for_token


def _storable(key: int) -> bool:
    return 0 <= key <= MAX_ID


TOKEN_USE_RESOLUTION_S = int(LAST_USED_RESOLUTION.total_seconds())  # a token's last use, noted once a minute
ACTIVE_STATES = "(" + ", ".join(f"'{state}'" for state in ACTIVE) + ")"

# The caller: the user of a usable token.
_CALLER = """
caller AS (
    SELECT u.id, u.username, u.role, t.id AS token_id
    FROM api_tokens t JOIN users u ON u.id = t.user_id
    WHERE t.token_hash = :token_hash AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > :now)
)"""

# The caller (token, user, role, membership) and the queue: every statement starts with these.
# `served` is the round whose cells the queue serves and whether it serves its reserve: the
# latest round's step once it is done, or while the next round is computed the previous
# round's reserve, unless labels beyond the next round's plan would overrun the budget.
_CALLER_AND_QUEUE = f"""{_CALLER},
project AS (
    SELECT p.id, p.name, p.state, p.reveal_after_label, p.budget, p.step_size
    FROM projects p, caller c
    WHERE p.id = :project_id
      AND (c.role = 'admin' OR EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = p.id AND m.user_id = c.id))
),
annotator AS (
    SELECT c.id AS user_id FROM caller c, project p WHERE c.role IN ('admin', 'annotator')
),
latest AS (
    SELECT r.id, r.number, r.state, r.n_selected, r.error
    FROM rounds r WHERE r.project_id = (SELECT id FROM project) ORDER BY r.number DESC LIMIT 1
),
served AS (
    SELECT l.id, l.number, l.n_selected, false AS reserve, 0 AS lo, l.n_selected AS hi
    FROM latest l WHERE l.state = 'done' AND l.n_selected > 0
    UNION ALL
    SELECT r.id, r.number, r.n_selected, true, r.n_selected, 2147483647
    FROM latest l JOIN rounds r ON r.project_id = (SELECT id FROM project) AND r.number = l.number - 1
    WHERE l.state IN {ACTIVE_STATES} AND l.number > 0 AND r.state = 'done'
      AND (SELECT count(*) FROM labels b
           WHERE b.project_id = r.project_id AND b.retracted_at IS NULL AND b.superseded_at IS NULL)
          + (SELECT coalesce(step_size, 0) FROM project) < (SELECT coalesce(budget, 0) FROM project)
)"""

# The served part's cells: its step (rank < n_selected) or its reserve. Written with scalar
# subqueries, which PostgreSQL computes once before the scan, so that the scan walks the index on
# (round_id, rank) of the unlabeled selections from the best rank and stops at the first free
# cell: with a join to `served` it read and sorted the whole step (60 ms for a 60,000-cell step).
_IN_SERVED_PART = (
    "s.round_id = (SELECT id FROM served) AND s.rank >= (SELECT lo FROM served) AND s.rank < (SELECT hi FROM served)"
)
_CALLER_ID = "(SELECT user_id FROM annotator)"
_ACTIVE_PROJECT = "(SELECT state FROM project) = 'active'"


def _lease(only_if: str = "") -> str:
    """The CTEs that lease the caller's held cell again, or else the best-ranked free one they
    have not skipped, or else one they skipped; `only_if` narrows all three."""
    return f"""
mine AS (
    SELECT s.id FROM selections s
    WHERE {_ACTIVE_PROJECT} AND {_IN_SERVED_PART} AND NOT s.labeled {only_if}
      AND s.leased_by_id = {_CALLER_ID} AND s.lease_expires_at > :now
    ORDER BY s.rank LIMIT 1
),
fresh AS (
    SELECT s.id FROM selections s
    WHERE NOT EXISTS (SELECT 1 FROM mine) AND {_ACTIVE_PROJECT} AND {_IN_SERVED_PART} AND NOT s.labeled {only_if}
      AND (s.leased_by_id IS NULL OR s.lease_expires_at <= :now)
      AND NOT EXISTS (SELECT 1 FROM cell_notes n
                      WHERE n.image_id = s.image_id AND n.round_id = s.round_id AND n.user_id = {_CALLER_ID})
    ORDER BY s.rank LIMIT 1 FOR UPDATE OF s SKIP LOCKED
),
skipped AS (
    SELECT s.id FROM selections s
    WHERE NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM fresh) AND {_ACTIVE_PROJECT}
      AND {_IN_SERVED_PART} AND NOT s.labeled {only_if}
      AND (s.leased_by_id IS NULL OR s.lease_expires_at <= :now)
      AND EXISTS (SELECT 1 FROM cell_notes n
                  WHERE n.image_id = s.image_id AND n.round_id = s.round_id AND n.user_id = {_CALLER_ID})
    ORDER BY s.rank LIMIT 1 FOR UPDATE OF s SKIP LOCKED
),
leased AS (
    UPDATE selections s
    SET leased_by_id = a.user_id,
        leased_at = CASE WHEN s.id IN (SELECT id FROM mine) THEN s.leased_at ELSE :now END,
        lease_expires_at = :expires
    FROM annotator a
    WHERE s.id IN (SELECT id FROM mine UNION ALL SELECT id FROM fresh UNION ALL SELECT id FROM skipped) AND NOT s.labeled
    RETURNING s.round_id, s.image_id, s.rank, s.score, s.details, s.lease_expires_at
)"""


# The leased cell (all null when none was) and what its answer says of the queue.
_LEASED_COLUMNS = """p.reveal_after_label, l.number AS latest_number, l.state AS latest_state, l.error AS latest_error,
       v.number AS served_number, v.n_selected AS served_n_selected, x.image_id AS cell_image_id,
       x.rank AS cell_rank, x.score AS cell_score, x.details AS cell_details,
       x.lease_expires_at AS cell_lease_expires_at, i.filename AS cell_filename"""
_LEASED_JOINS = """LEFT JOIN project p ON true
LEFT JOIN latest l ON true
LEFT JOIN leased x ON true
LEFT JOIN served v ON v.id = x.round_id
LEFT JOIN images i ON i.id = x.image_id"""

_NEXT = f"""
WITH {_CALLER_AND_QUEUE},
{_lease()},
queue_empty AS (
    UPDATE rounds r SET queue_empty_since = :now
    FROM latest l
    WHERE r.id = l.id AND l.state IN {ACTIVE_STATES} AND r.queue_empty_since IS NULL
      AND EXISTS (SELECT 1 FROM annotator) AND (SELECT state FROM project) = 'active'
      AND NOT EXISTS (SELECT 1 FROM leased)
    RETURNING r.id
)
SELECT c.id AS user_id, c.role, p.name AS project_name, p.state AS project_state, {_LEASED_COLUMNS}
FROM (SELECT 1) AS one
LEFT JOIN caller c ON true
{_LEASED_JOINS}
"""

# A first label of a queued cell. `seen` is the cell's selection as this statement's snapshot
# has it, `sel` the same row locked: a row written since the snapshot (a round stored meanwhile
# that queued the cell again, backend.core.queries.mark_labeled_cells) comes back in a new
# version, and the statement does nothing and asks to be run again with a fresh snapshot.
#
# `step` is an INSERT ... ON CONFLICT DO UPDATE, not an UPDATE of the round row, because every
# label writes that row, so at saturation nearly every label finds it changed since its
# snapshot. An UPDATE then re-checks the row through EvalPlanQual, which sets up the plan of the
# whole statement again (74 subplans): 11% of PostgreSQL's samples at saturation in a perf
# profile, 2.6% with the upsert (bench/README.md, session 13). ON CONFLICT DO UPDATE locks the
# row's latest version and checks its WHERE on that version directly, with the same outcome.
# The INSERT half never inserts: it proposes a copy of the round, which exists (rounds are
# deleted only with their project, and then the copy's foreign key to the project fails the
# statement); the copy's `open_cells` carries the labeled cell's rank to the WHERE, as
# `excluded.open_cells`.
_LABEL_CTES = f"""
cls AS (
    SELECT pc.id FROM project_classes pc WHERE pc.project_id = (SELECT id FROM project) AND pc.name = :class_name
),
image AS (
    SELECT i.id FROM images i WHERE i.id = :image_id AND i.project_id = (SELECT id FROM project)
),
previous AS (
    SELECT b.id FROM labels b WHERE b.image_id = :image_id AND b.retracted_at IS NULL AND b.superseded_at IS NULL
),
here AS (
    SELECT s.id FROM selections s WHERE {_IN_SERVED_PART} AND s.image_id = :image_id
),
held AS (
    SELECT s.id FROM selections s JOIN rounds r ON r.id = s.round_id, annotator a
    WHERE NOT EXISTS (SELECT 1 FROM here) AND r.project_id = (SELECT id FROM project) AND s.image_id = :image_id
      AND s.leased_by_id = a.user_id AND s.lease_expires_at > :now
    ORDER BY r.number DESC LIMIT 1
),
seen AS (
    SELECT s.id, s.xmin AS version FROM selections s WHERE s.id IN (SELECT id FROM here UNION ALL SELECT id FROM held)
),
sel AS (
    SELECT s.id, s.round_id, s.leased_by_id, s.leased_at, s.lease_expires_at, s.details, s.xmin AS version
    FROM selections s
    WHERE s.id = (SELECT id FROM seen) AND EXISTS (SELECT 1 FROM annotator) AND EXISTS (SELECT 1 FROM cls)
      AND NOT EXISTS (SELECT 1 FROM previous) AND NOT :after_reveal
    FOR UPDATE
),
verdict AS (
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM caller) THEN 'unauthorized'
        WHEN NOT EXISTS (SELECT 1 FROM project) THEN 'no_project'
        WHEN NOT EXISTS (SELECT 1 FROM annotator) THEN 'forbidden'
        WHEN NOT EXISTS (SELECT 1 FROM cls) THEN 'no_class'
        WHEN NOT EXISTS (SELECT 1 FROM image) THEN 'no_image'
        WHEN EXISTS (SELECT 1 FROM previous) OR :after_reveal THEN 'relabel'
        WHEN NOT EXISTS (SELECT 1 FROM sel) THEN 'not_queued'
        WHEN NOT ((SELECT version FROM sel) = (SELECT version FROM seen)) THEN 'retry'
        WHEN EXISTS (SELECT 1 FROM sel s, annotator a
                     WHERE s.leased_by_id <> a.user_id AND s.lease_expires_at > :now) THEN 'leased'
        ELSE 'ok'
    END AS outcome
),
inserted AS (
    INSERT INTO labels (project_id, image_id, class_id, user_id, round_id, duration_ms, created_at, hints_seen)
    SELECT p.id, :image_id, (SELECT id FROM cls), a.user_id, s.round_id,
           coalesce(:duration_ms,
                    CASE WHEN s.leased_by_id = a.user_id AND s.leased_at IS NOT NULL
                         THEN floor(extract(epoch FROM (CAST(:now AS timestamp) - s.leased_at)) * 1000)::int END),
           :now, NOT p.reveal_after_label
    FROM project p, annotator a, sel s
    WHERE (SELECT outcome FROM verdict) = 'ok'
    ON CONFLICT (image_id) WHERE retracted_at IS NULL AND superseded_at IS NULL DO NOTHING
    RETURNING id, round_id, duration_ms, created_at, hints_seen
),
marked AS (
    UPDATE selections SET labeled = true, leased_by_id = NULL, leased_at = NULL, lease_expires_at = NULL
    WHERE image_id = :image_id AND NOT labeled AND EXISTS (SELECT 1 FROM inserted)
    RETURNING round_id, rank
),
step AS (  -- takes one off the round's open cells; an upsert, not an UPDATE (see above)
    INSERT INTO rounds AS r (id, project_id, number, state, n_labels, n_selected, open_cells, attempts,
                             progress, timings, metrics, selection_summary, diagnostics, created_at)
    SELECT o.id, o.project_id, o.number, o.state, o.n_labels, o.n_selected, m.rank, o.attempts,
           o.progress, o.timings, o.metrics, o.selection_summary, o.diagnostics, o.created_at
    FROM marked m JOIN rounds o ON o.id = m.round_id
    ON CONFLICT (id) DO UPDATE SET open_cells = r.open_cells - 1
    WHERE excluded.open_cells < r.n_selected AND r.state = 'done'
    RETURNING r.project_id, r.number, r.open_cells
),
opened AS (
    INSERT INTO rounds (project_id, number, state, n_labels, n_selected, open_cells, attempts,
                        progress, timings, metrics, selection_summary, diagnostics, created_at)
    SELECT project_id, number + 1, 'queued', 0, 0, 0, 0, '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', :now
    FROM step WHERE open_cells = 0
    ON CONFLICT (project_id, number) DO NOTHING
    RETURNING id
)"""
_LABEL_SELECT = """
SELECT d.outcome, c.username, n.id AS label_id, n.duration_ms, n.created_at, n.hints_seen,
       (SELECT number FROM rounds WHERE id = n.round_id) AS round_number,
       s.details, s.lease_expires_at, (SELECT id FROM opened) AS opened_round_id"""
_LABEL_FROM = """
FROM verdict d
LEFT JOIN caller c ON true
LEFT JOIN inserted n ON true
LEFT JOIN sel s ON true"""
_LABEL = f"WITH {_CALLER_AND_QUEUE},{_LABEL_CTES}{_LABEL_SELECT}{_LABEL_FROM}"

# A label and the caller's next cell in one statement: the browser's one request per cell. The
# statement's snapshot still has the labeled cell queued, so the lease passes it over; it leases
# only once the label is stored (a refused label changes nothing), and where it finds no cell
# (the label closed the step, or the queue is empty) `queue/next`'s statement answers instead.
_LABEL_THEN_NEXT = f"""WITH {_CALLER_AND_QUEUE},{_LABEL_CTES},
{_lease("AND s.image_id <> :image_id AND EXISTS (SELECT 1 FROM inserted)")}{_LABEL_SELECT},
       {_LEASED_COLUMNS}{_LABEL_FROM}
{_LEASED_JOINS}
"""

_UNDO = f"""
WITH {_CALLER_AND_QUEUE},
last AS (
    SELECT b.id, b.image_id FROM labels b, annotator a
    WHERE b.project_id = (SELECT id FROM project) AND b.user_id = a.user_id
      AND b.retracted_at IS NULL AND b.superseded_at IS NULL
    ORDER BY b.created_at DESC, b.id DESC LIMIT 1
    FOR UPDATE OF b
),
back AS (
    SELECT s.id, s.round_id, (SELECT reserve FROM served) AS reserve FROM selections s
    WHERE {_IN_SERVED_PART} AND s.image_id = (SELECT image_id FROM last)
),
verdict AS (
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM caller) THEN 'unauthorized'
        WHEN NOT EXISTS (SELECT 1 FROM project) THEN 'no_project'
        WHEN NOT EXISTS (SELECT 1 FROM annotator) THEN 'forbidden'
        WHEN NOT EXISTS (SELECT 1 FROM last) THEN 'nothing'
        WHEN NOT EXISTS (SELECT 1 FROM back) THEN 'step_closed'
        ELSE 'ok'
    END AS outcome
),
retracted AS (
    UPDATE labels SET retracted_at = :now
    WHERE id = (SELECT id FROM last) AND (SELECT outcome FROM verdict) = 'ok'
    RETURNING id, image_id, class_id, round_id, duration_ms, created_at, retracted_at, hints_seen
),
unmarked AS (
    UPDATE selections s
    SET labeled = false,
        leased_by_id = CASE WHEN s.id = b.id THEN a.user_id ELSE s.leased_by_id END,
        leased_at = CASE WHEN s.id = b.id THEN :now ELSE s.leased_at END,
        lease_expires_at = CASE WHEN s.id = b.id THEN :expires ELSE s.lease_expires_at END
    FROM back b, annotator a
    WHERE s.image_id = (SELECT image_id FROM retracted)
    RETURNING s.id
),
reopened AS (
    UPDATE rounds r SET open_cells = r.open_cells + 1
    FROM back b
    WHERE r.id = b.round_id AND NOT b.reserve AND EXISTS (SELECT 1 FROM retracted)
    RETURNING r.id
)
SELECT d.outcome, c.username, t.id AS label_id, t.image_id, t.duration_ms, t.created_at, t.retracted_at,
       t.hints_seen, (SELECT name FROM project_classes WHERE id = t.class_id) AS class_name,
       (SELECT number FROM rounds WHERE id = t.round_id) AS round_number
FROM verdict d
LEFT JOIN caller c ON true
LEFT JOIN retracted t ON true
"""

_SKIP = f"""
WITH {_CALLER_AND_QUEUE},
image AS (
    SELECT i.id FROM images i WHERE i.id = :image_id AND i.project_id = (SELECT id FROM project)
),
target AS (
    SELECT s.id, s.round_id, s.leased_by_id, s.lease_expires_at FROM selections s
    WHERE {_IN_SERVED_PART} AND s.image_id = :image_id AND NOT s.labeled AND EXISTS (SELECT 1 FROM annotator)
    FOR UPDATE OF s
),
verdict AS (
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM caller) THEN 'unauthorized'
        WHEN NOT EXISTS (SELECT 1 FROM project) THEN 'no_project'
        WHEN NOT EXISTS (SELECT 1 FROM annotator) THEN 'forbidden'
        WHEN NOT EXISTS (SELECT 1 FROM image) THEN 'no_image'
        WHEN NOT EXISTS (SELECT 1 FROM target) THEN 'not_queued'
        WHEN EXISTS (SELECT 1 FROM target t, annotator a
                     WHERE t.leased_by_id <> a.user_id AND t.lease_expires_at > :now) THEN 'leased'
        ELSE 'ok'
    END AS outcome
),
released AS (
    UPDATE selections SET leased_by_id = NULL, leased_at = NULL, lease_expires_at = NULL
    WHERE id = (SELECT id FROM target) AND (SELECT outcome FROM verdict) = 'ok'
    RETURNING id
),
noted AS (
    INSERT INTO cell_notes (project_id, image_id, round_id, user_id, kind, note, created_at)
    SELECT :project_id, :image_id, t.round_id, a.user_id, :kind, :note, :now
    FROM target t, annotator a
    WHERE (SELECT outcome FROM verdict) = 'ok'
    RETURNING id
)
SELECT d.outcome FROM verdict d
"""


def _statement(sql: str, **result_types):
    """The statement with its result columns typed in the order it selects them. Declared by
    position, SQLAlchemy matches them to the cursor's columns once per statement and keeps that;
    declared by name, it matched them again at every call (about 5% of the API's CPU per label)."""
    return text(sql).columns(*(column(name, type_) for name, type_ in result_types.items()))


_LEASED_TYPES = dict(
    reveal_after_label=Boolean,
    latest_number=Integer,
    latest_state=String,
    latest_error=String,
    served_number=Integer,
    served_n_selected=Integer,
    cell_image_id=Integer,
    cell_rank=Integer,
    cell_score=Float,
    cell_details=JSON,
    cell_lease_expires_at=DateTime,
    cell_filename=String,
)
_LABEL_TYPES = dict(
    outcome=String,
    username=String,
    label_id=Integer,
    duration_ms=Integer,
    created_at=DateTime,
    hints_seen=Boolean,
    round_number=Integer,
    details=JSON,
    lease_expires_at=DateTime,
    opened_round_id=Integer,
)
NEXT = _statement(_NEXT, user_id=Integer, role=String, project_name=String, project_state=String, **_LEASED_TYPES)
LABEL = _statement(_LABEL, **_LABEL_TYPES).bindparams(bindparam("duration_ms", type_=Integer))
LABEL_THEN_NEXT = _statement(_LABEL_THEN_NEXT, **_LABEL_TYPES, **_LEASED_TYPES).bindparams(
    bindparam("duration_ms", type_=Integer)
)
UNDO = _statement(
    _UNDO,
    outcome=String,
    username=String,
    label_id=Integer,
    image_id=Integer,
    duration_ms=Integer,
    created_at=DateTime,
    retracted_at=DateTime,
    hints_seen=Boolean,
    class_name=String,
    round_number=Integer,
)
SKIP = _statement(_SKIP, outcome=String)


# The caller's token's last use, noted at most once a minute.
_TOKEN_USED = f"""
token_used AS (
    UPDATE api_tokens SET last_used_at = :now
    WHERE id = (SELECT token_id FROM caller)
      AND (last_used_at IS NULL OR last_used_at < CAST(:now AS timestamp) - INTERVAL '{TOKEN_USE_RESOLUTION_S} seconds')
    RETURNING id
)"""

# The access check also notes the token's last use: it runs once per token and project every
# ACCESS_CACHE_S seconds, so the four statements above need not write to api_tokens as well.
ACCESS = text(f"""
WITH {_CALLER},{_TOKEN_USED}
SELECT c.role, EXISTS (SELECT 1 FROM projects p WHERE p.id = :project_id AND (c.role = 'admin'
    OR EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = p.id AND m.user_id = c.id))) AS member
FROM caller c
""")
# Long enough that reading it is rare against the labels (50 annotators at 100 labels/s read it
# 1.7 times a second, not 10), short enough that a token's last use stays within a minute or so.
ACCESS_CACHE_S = 30.0
_access: dict[tuple[str, int], float] = {}  # (token hash, project) -> when found allowed


async def require_annotator(secret: str, project_id: int) -> None:
    """Refuses a caller who may not label in the project (401, 404, 403) before the request's
    body is read, as the other routes' dependencies do. A caller found allowed is remembered for
    ACCESS_CACHE_S seconds per process: each statement checks token, role and membership again,
    so a revoked token or a removed member is refused at once. A refusal is not remembered, so
    an annotator added to the project a moment ago is let in at once."""
    key = (token_hash(secret), project_id)
    allowed_at = _access.get(key)
    if allowed_at is not None and time.monotonic() - allowed_at < ACCESS_CACHE_S:
        return
    outcome = await _read_access(secret, *key)
    if outcome != "ok":
        _refuse(outcome, project_id)
    if len(_access) > 10_000:
        _access.clear()
    _access[key] = time.monotonic()


async def _read_access(secret: str, hashed: str, project_id: int) -> str:
    if not _storable(project_id):
        return "no_project"
    if _on_sqlite():
        return await run_in_threadpool(_read_access_orm, secret, project_id)
    rows = await _rows(ACCESS, token_hash=hashed, project_id=project_id, now=utcnow())
    row = rows[0] if rows else None
    if row is None:
        return "unauthorized"
    return "no_project" if not row.member else "ok" if row.role in ("admin", "annotator") else "forbidden"


def _read_access_orm(secret: str, project_id: int) -> str:
    with new_session() as session:
        return _caller_orm(session, secret, project_id)[0]


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _on_sqlite() -> bool:
    return get_settings().resolved_database_url.startswith("sqlite")


async def _run(statement, **params) -> Row:
    """The one row of a statement of this module."""
    return (await _rows(statement, **params))[0]


async def _rows(statement, **params) -> Sequence[Row]:
    """A database that cannot be reached is an OperationalError, as on the sync engine (the API
    answers 503 with Retry-After), and so is a pooled connection the server dropped (the pool is
    then emptied, so the next request connects afresh)."""
    try:
        connection = await get_async_engine().connect()
    except (OSError, TimeoutError, DBAPIError, asyncpg.PostgresError, asyncpg.exceptions.InternalClientError) as error:
        # not reached, refusing connections, or starting up ("cannot connect now")
        raise OperationalError("connect", None, error) from error
    try:
        return (await connection.execute(statement, params)).all()
    except DBAPIError as error:
        if error.connection_invalidated:
            raise OperationalError(error.statement, error.params, error.orig or error) from error
        raise
    finally:
        await connection.close()


def _refuse(outcome: str, project_id: int, image_id: int | None = None) -> NoReturn:
    """The 4xx of a statement's verdict that is not 'ok'."""
    match outcome:
        case "unauthorized":
            raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
        case "no_project":
            raise NotFound(f"no project {project_id}")
        case "forbidden":
            raise Forbidden("this needs the role admin or annotator")
        case "no_image":
            raise NotFound(f"project {project_id} has no image {image_id}")
        case "not_queued":
            raise Conflict(f"image {image_id} is not in the labeling queue")
        case _:
            raise RuntimeError(f"unexpected outcome {outcome!r}")


async def next_cell(secret: str, project_id: int) -> NextCell:
    """Leases the caller's held cell again or the best-ranked free one; `cell` None when the
    queue is empty, `message` says why."""
    if _on_sqlite():
        return await run_in_threadpool(_next_cell_orm, secret, project_id)
    if not _storable(project_id):
        raise NotFound(f"no project {project_id}")
    now = utcnow()
    row = await _run(
        NEXT,
        token_hash=token_hash(secret),
        project_id=project_id,
        now=now,
        expires=labeling.lease_expiry(now),
    )
    if row.user_id is None:
        _refuse("unauthorized", project_id)
    if row.project_name is None:
        _refuse("no_project", project_id)
    if row.role not in ("admin", "annotator"):
        _refuse("forbidden", project_id)
    if row.project_state != "active":
        raise _inactive(row.project_name, row.project_state)
    return _leased_from(project_id, row) or _empty_queue(row.latest_number, row.latest_state, row.latest_error)


def _leased_from(project_id: int, row: Row) -> NextCell | None:
    """The answer of `queue/next` from a statement that leased a cell (_LEASED_COLUMNS), or None."""
    if row.cell_image_id is None:
        return None
    return NextCell(
        cell=_leased_cell(
            project_id,
            row.cell_image_id,
            row.cell_filename,
            row.served_number,
            row.cell_rank,
            row.cell_score,
            row.cell_details,
            row.cell_lease_expires_at,
            row.served_n_selected,
            row.reveal_after_label,
        ),
        message="leased",
        round_state=row.latest_state,
    )


def _inactive(name: str, state: str) -> Conflict:
    return Conflict(f"project {name!r} is {state}: " + ("start it first" if state == "draft" else "its budget is spent"))


def _empty_queue(number: int | None, state: str | None, error: str | None) -> NextCell:
    if state in ACTIVE:
        message = f"round {number} is being computed; the next cells arrive when it is done"
    elif state == "failed":
        message = f"round {number} failed: {error}; an admin can retry it"
    else:
        message = "every queued cell is leased or labeled"
    return NextCell(cell=None, message=message, round_state=state)


def _leased_cell(
    project_id: int,
    image_id: int,
    filename: str,
    round_number: int,
    rank: int,
    score: float,
    details: dict[str, Any],
    lease_expires_at: datetime,
    n_selected: int,
    hidden: bool,
) -> LeasedCell:
    return LeasedCell(
        image_id=image_id,
        filename=filename,
        image_url=f"/api/projects/{project_id}/images/{image_id}/file",
        round=round_number,
        rank=rank,
        score=score,
        details={} if hidden else details,
        hints_hidden=hidden,
        lease_expires_at=lease_expires_at,
        reserve=rank >= n_selected,
    )


async def submit_label(
    secret: str,
    project_id: int,
    image_id: int,
    class_name: str,
    duration_ms: int | None,
    after_reveal: bool,
    lease_next: bool = False,
) -> LabelOut:
    """Labels a queued cell (a relabel, or the answer after a reveal, keeps the old label).
    With `lease_next` the answer carries the caller's next cell as `queue/next` gives it, leased
    in the label's own statement where it can be. `next` stays None where the label was stored
    but `queue/next` then refuses (the token revoked meanwhile, say): once a label is stored its
    answer is never an error."""
    label, leased = await _store_label(secret, project_id, image_id, class_name, duration_ms, after_reveal, lease_next)
    if lease_next:
        try:
            label.next = leased or await next_cell(secret, project_id)
        except DomainError:
            label.next = None
    return label


async def _store_label(
    secret: str,
    project_id: int,
    image_id: int,
    class_name: str,
    duration_ms: int | None,
    after_reveal: bool,
    lease_next: bool,
) -> tuple[LabelOut, NextCell | None]:
    """The stored label, and the next cell where the statement leased one."""
    if _on_sqlite():
        label = await run_in_threadpool(
            _submit_label_orm, secret, project_id, image_id, class_name, duration_ms, after_reveal
        )
        return label, None
    if not _storable(project_id):
        raise NotFound(f"no project {project_id}")
    if not _storable(image_id):
        image_id = 0  # no such image: the statement says so
    while True:
        now = utcnow()
        lease = {"expires": labeling.lease_expiry(now)} if lease_next else {}
        row = await _run(
            LABEL_THEN_NEXT if lease_next else LABEL,
            token_hash=token_hash(secret),
            project_id=project_id,
            image_id=image_id,
            class_name=class_name,
            duration_ms=duration_ms,
            after_reveal=after_reveal,
            now=now,
            **lease,
        )
        if row.outcome != "retry":
            break
    match row.outcome:
        case "relabel" | "no_class":  # the ORM path relabels, and words a class error with the classes
            label = await run_in_threadpool(
                _submit_label_orm, secret, project_id, image_id, class_name, duration_ms, after_reveal
            )
            return label, None
        case "leased":
            raise Conflict(f"image {image_id} is leased to another annotator until {row.lease_expires_at:%H:%M:%S} UTC")
        case "ok" if row.label_id is None:
            raise Conflict(f"image {image_id} was labeled by someone else a moment ago")
        case "ok":
            pass
        case outcome:
            _refuse(outcome, project_id, image_id)
    if row.opened_round_id is not None:
        await run_in_threadpool(enqueue, Round, row.opened_round_id)
    label = LabelOut(
        id=row.label_id,
        image_id=image_id,
        class_name=class_name,
        username=row.username,
        round=row.round_number,
        duration_ms=row.duration_ms,
        created_at=row.created_at,
        retracted_at=None,
        superseded_at=None,
        hints_seen=row.hints_seen,
        hints=None if row.hints_seen else row.details,
    )
    return label, _leased_from(project_id, row) if lease_next else None


async def undo_last_label(secret: str, project_id: int) -> LabelOut:
    """Retracts the caller's last label while its step is open and leases the cell back to them."""
    if _on_sqlite():
        return await run_in_threadpool(_undo_orm, secret, project_id)
    if not _storable(project_id):
        raise NotFound(f"no project {project_id}")
    now = utcnow()
    row = await _run(
        UNDO,
        token_hash=token_hash(secret),
        project_id=project_id,
        now=now,
        expires=labeling.lease_expiry(now),
    )
    match row.outcome:
        case "nothing":
            raise Conflict("there is no label of yours to undo")
        case "step_closed":
            raise Conflict(
                "your last label closed its step and the next round has started from it; relabel the cell instead"
            )
        case "ok":
            pass
        case outcome:
            _refuse(outcome, project_id)
    return LabelOut(
        id=row.label_id,
        image_id=row.image_id,
        class_name=row.class_name,
        username=row.username,
        round=row.round_number,
        duration_ms=row.duration_ms,
        created_at=row.created_at,
        retracted_at=row.retracted_at,
        superseded_at=None,
        hints_seen=row.hints_seen,
    )


async def skip_cell(secret: str, project_id: int, image_id: int, kind: str, note: str) -> dict:
    """Returns a queued cell to the queue with the caller's note; they get other cells first."""
    if _on_sqlite():
        return await run_in_threadpool(_skip_orm, secret, project_id, image_id, kind, note)
    if not _storable(project_id):
        raise NotFound(f"no project {project_id}")
    if not _storable(image_id):
        image_id = 0
    row = await _run(
        SKIP,
        token_hash=token_hash(secret),
        project_id=project_id,
        image_id=image_id,
        kind=kind,
        note=note,
        now=utcnow(),
    )
    if row.outcome == "leased":
        raise Conflict(f"image {image_id} is leased to another annotator")
    if row.outcome != "ok":
        _refuse(row.outcome, project_id, image_id)
    return {"released": True, "image_id": image_id, "reason": kind}


# --- the ORM path: labeling.py's functions, in the thread pool ---


def _caller_orm(session, secret: str, project_id: int) -> tuple[str, User | None, Project | None]:
    """(outcome, user, project) by the hot path's rules: 'unauthorized', 'no_project',
    'forbidden' or 'ok'."""
    user = user_for_token(session, secret)
    project = find_visible_project(session, user, project_id) if user is not None and _storable(project_id) else None
    if user is None:
        return "unauthorized", None, None
    if project is None:
        return "no_project", user, None
    return ("ok" if user.role in ("admin", "annotator") else "forbidden"), user, project


def _annotator_orm(session, secret: str, project_id: int) -> tuple[User, Project]:
    """The caller and the project, or the 4xx that refuses them."""
    outcome, user, project = _caller_orm(session, secret, project_id)
    if outcome != "ok" or user is None or project is None:
        _refuse(outcome, project_id)
    return user, project


def _next_cell_orm(secret: str, project_id: int) -> NextCell:
    with new_session() as session:
        user, project = _annotator_orm(session, secret, project_id)
        selection, queue = labeling.lease_next_cell(session, project, user)
        latest, served = queue.latest, queue.round
        if selection is None or selection.lease_expires_at is None or served is None or latest is None:
            return _empty_queue(
                latest.number if latest else None, latest.state if latest else None, latest.error if latest else None
            )
        return NextCell(
            cell=_leased_cell(
                project.id,
                selection.image_id,
                selection.image.filename,
                served.number,
                selection.rank,
                selection.score,
                selection.details,
                selection.lease_expires_at,
                served.n_selected,
                project.reveal_after_label,
            ),
            message="leased",
            round_state=latest.state,
        )


def _submit_label_orm(
    secret: str, project_id: int, image_id: int, class_name: str, duration_ms: int | None, after_reveal: bool
) -> LabelOut:
    with new_session() as session:
        user, project = _annotator_orm(session, secret, project_id)
        label, _ = labeling.submit_label(session, project, user, image_id, class_name, duration_ms, after_reveal)
        hints = labeling.hints_for(session, label) if not label.hints_seen else None
        return _label_out(session, project, label, hints)


def _undo_orm(secret: str, project_id: int) -> LabelOut:
    with new_session() as session:
        user, project = _annotator_orm(session, secret, project_id)
        return _label_out(session, project, labeling.undo_last_label(session, project, user))


def _skip_orm(secret: str, project_id: int, image_id: int, kind: str, note: str) -> dict:
    with new_session() as session:
        user, project = _annotator_orm(session, secret, project_id)
        cell_note = labeling.skip_cell(session, project, user, image_id, kind, note)
        return {"released": True, "image_id": cell_note.image_id, "reason": cell_note.kind}


def _label_out(session, project, label, hints: dict | None = None) -> LabelOut:
    return LabelOut(
        id=label.id,
        image_id=label.image_id,
        class_name=next(c.name for c in project.classes if c.id == label.class_id),
        username=session.get(User, label.user_id).username,
        round=label.round.number if label.round else None,
        duration_ms=label.duration_ms,
        created_at=label.created_at,
        retracted_at=label.retracted_at,
        superseded_at=label.superseded_at,
        hints_seen=label.hints_seen,
        hints=hints,
    )
