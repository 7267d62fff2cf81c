"""Bookkeeping shared by the worker's long jobs (rounds, pool clusterings): rows with
`state`, `progress`, `error` and `finished_at`, written in short sessions of their own."""
from backend.db.models import utcnow
from backend.db.session import new_session


def set_progress(model, row_id: int, **progress) -> None:
    with new_session() as session:
        session.get(model, row_id).progress = progress
        session.commit()


def mark_failed(model, row_id: int, error: Exception) -> None:
    with new_session() as session:
        row = session.get(model, row_id)
        row.state, row.error, row.finished_at = "failed", f"{type(error).__name__}: {error}", utcnow()
        row.progress = {"phase": "failed"}
        session.commit()
