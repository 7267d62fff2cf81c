"""`xal import PROJECT DIR`: a folder of cells into a project, all in one transaction."""

import sys
from pathlib import Path

from tqdm import tqdm

from backend.core.db.session import new_session
from backend.core.readers import files_from_folder
from backend.services.imports import ImportReport, import_images
from backend.services.projects import find_project

BATCH_SIZE = 500  # files decoded, stored and flushed together; bounds memory, not atomicity


def run_import(
    project_ref: str, folder: Path, labels: Path | None, split: str, on_duplicate: str, on_invalid: str
) -> ImportReport:
    """Imports every image of `folder` (or of the `labels` CSV) into the project named or numbered
    `project_ref`, and commits only when the whole folder went in (or was skipped as told)."""
    with new_session() as session:
        project = find_project(session, project_ref)
        files = files_from_folder(folder, labels, class_names=[c.name for c in project.classes])
        with tqdm(total=len(files), unit="image", file=sys.stderr, desc=f"importing into {project.name}") as bar:
            report = import_images(
                session, project, files, split, on_duplicate, on_invalid, batch_size=BATCH_SIZE, progress=bar.update
            )
        session.commit()
    return report
