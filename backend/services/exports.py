"""A project's labels as a file to download: CSV or JSON, one row per label, oldest first."""

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.db.models import Image, Label, Project, ProjectClass, Round, User
from backend.core.queries import is_current

FIELDS = [
    "image_id",
    "filename",
    "path",
    "content_hash",
    "class_name",
    "username",
    "round",
    "duration_ms",
    "created_at",
    "retracted_at",
    "superseded_at",
]
# a spreadsheet reads a cell that starts with one of these as a formula (OWASP, CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Format = Literal["csv", "json"]


@dataclass
class Export:
    filename: str
    media_type: str
    body: str


def export_labels(session: Session, project: Project, user: User, format: Format, history: bool = False) -> Export:
    """The current labels (with `history`, the retracted and superseded ones too). In CSV a text
    cell that a spreadsheet would run as a formula starts with a single quote; JSON is exact."""
    rows = [
        _row(label, image, class_name, username, round_number, user)
        for label, image, class_name, username, round_number in labels_for_export(session, project, history)
    ]
    filename = re.sub(r"[^A-Za-z0-9._-]+", "_", project.name) + f"-labels.{format}"
    if format == "json":
        return Export(filename, "application/json", json.dumps(rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
    return Export(filename, "text/csv", buffer.getvalue())


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


def _row(label: Label, image: Image, class_name: str, username: str, round_number: int | None, user: User) -> dict:
    return {
        "image_id": image.id,
        "filename": image.filename,
        "path": _imported_path(image, user),
        "content_hash": image.content_hash,
        "class_name": class_name,
        "username": username,
        "round": round_number,
        "duration_ms": label.duration_ms,
        "created_at": label.created_at.isoformat(),
        "retracted_at": label.retracted_at and label.retracted_at.isoformat(),
        "superseded_at": label.superseded_at and label.superseded_at.isoformat(),
    }


def _imported_path(image: Image, user: User) -> str | None:
    """The file's path in the imported zip or folder (backend.services.imports keeps it in the
    image's metadata when it has folders). Not for annotators: a class folder gives the answer away."""
    if user.role == "annotator":
        return None
    return image.meta.get("path", image.filename)


def spreadsheet_safe(value):
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
