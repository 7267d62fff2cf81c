"""Importing cells into a project's pool or test split: from uploads, zips and folders (read by
backend.core.readers).

An import is all-or-nothing unless told to skip: every file is checked (name, size, decodes
as an image, mask, class, split, duplicate) and one bad file stops the whole import with a
message that names it and counts every bad file of the import. Files are checked and stored
in batches (a folder of any size in bounded memory); once a file has failed, later batches
are only checked, and nothing is committed. Blobs are content-addressed, so those written
before a failure leave nothing wrong.
"""

import hashlib
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.core.blobs import get_blob_store
from backend.core.db.models import Image, Project
from backend.core.errors import Conflict, Invalid, PayloadTooLarge
from backend.core.images import InvalidImage, decode_image
from backend.core.names import file_name
from backend.core.readers import LISTED_IN_MESSAGE, IncomingFile, and_more, counted
from backend.core.settings import Settings, get_settings

SPLITS = ("pool", "test")
MODES = ("error", "skip")
_MAX_FILENAME = 500  # Image.filename

OnProblem = Literal["error", "skip"]


@dataclass
class ImportReport:
    image_ids: list[int] = field(default_factory=list)
    imported_per_split: Counter[str] = field(default_factory=Counter)
    duplicates: list[str] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)  # {"filename", "error"}


@dataclass
class _Accepted:
    file: IncomingFile
    filename: str  # normalised (backend.core.names.file_name)
    split: str
    content_hash: str
    width: int
    height: int
    class_id: int | None


def import_images(
    session: Session,
    project: Project,
    files: Iterable[IncomingFile],
    split: str = "pool",
    on_duplicate: OnProblem = "error",
    on_invalid: OnProblem = "error",
    *,
    batch_size: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> ImportReport:
    """Adds the files to the project (flushed, not committed) and reports what was skipped.

    Each file goes to `split` unless it names its own (a labels.csv's split column). With
    on_invalid / on_duplicate = "error" (the default) a single bad or duplicate file raises
    and nothing is added; with "skip" it is reported and the rest imported. Files are read
    `batch_size` at a time (None: all at once); `progress` is told each batch's length.
    """
    if split not in SPLITS:
        raise Invalid(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    for name, mode in (("on_duplicate", on_duplicate), ("on_invalid", on_invalid)):
        if mode not in MODES:
            raise Invalid(f"unknown {name} mode {mode!r}; expected one of {', '.join(MODES)}")
    run = _Import(session, project, split)
    for batch in _batches(files, batch_size):
        accepted = run.check(batch)
        if not run.refused(on_duplicate, on_invalid):
            run.store(accepted)
        if progress is not None:
            progress(len(batch))
    if not run.files:
        raise Invalid("there are no image files to import")
    run.raise_if_refused(on_duplicate, on_invalid)
    return run.report


class _Import:
    """One import's checks and what they found, batch after batch."""

    def __init__(self, session: Session, project: Project, split: str):
        self.session, self.project, self.split = session, project, split
        self.settings = get_settings()
        self.classes = {c.name.casefold(): c for c in project.classes}
        self.report = ImportReport()
        self.files = 0
        self.too_large = 0
        self.duplicate_reasons: list[str] = []
        self.accepted_hashes: dict[str, str] = {}  # content hash -> file name, every batch so far

    def check(self, batch: list[IncomingFile]) -> list[_Accepted]:
        self.files += len(batch)
        hashes = [hashlib.sha256(f.data).hexdigest() for f in batch]
        stored = _stored_images(self.session, self.project, set(hashes) - self.accepted_hashes.keys())
        accepted = []
        for file, content_hash in zip(batch, hashes):
            if content_hash in self.accepted_hashes:
                self._duplicate(file, f"same content as {self.accepted_hashes[content_hash]} in this upload")
                continue
            if content_hash in stored:
                image_id, filename = stored[content_hash]
                self._duplicate(file, f"same content as image {image_id}, {filename}")
                continue
            try:
                item = self._checked(file, content_hash)
            except _Rejected as rejected:
                self.report.invalid.append({"filename": file.filename, "error": rejected.reason})
                self.too_large += rejected.too_large
                continue
            self.accepted_hashes[content_hash] = file.filename
            accepted.append(item)
        return accepted

    def _duplicate(self, file: IncomingFile, reason: str) -> None:
        self.report.duplicates.append(file.filename)
        self.duplicate_reasons.append(f"{file.filename} ({reason})")

    def _checked(self, file: IncomingFile, content_hash: str) -> _Accepted:
        split = file.split or self.split
        filename, width, height = _check_file(file, split, self.project.channel, self.classes, self.settings)
        reference = self.classes.get(file.reference_class.casefold()) if file.reference_class else None
        return _Accepted(file, filename, split, content_hash, width, height, reference.id if reference else None)

    def refused(self, on_duplicate: OnProblem, on_invalid: OnProblem) -> bool:
        return bool(self.report.invalid and on_invalid == "error" or self.report.duplicates and on_duplicate == "error")

    def raise_if_refused(self, on_duplicate: OnProblem, on_invalid: OnProblem) -> None:
        report = self.report
        if report.invalid and on_invalid == "error":
            problems = "; ".join(f"{p['filename']}: {p['error'].rstrip('.')}" for p in report.invalid[:LISTED_IN_MESSAGE])
            error = PayloadTooLarge if self.too_large == len(report.invalid) else Invalid
            raise error(
                f"{counted(report.invalid, 'file')} cannot be imported, so nothing was imported: "
                f"{problems}{and_more(report.invalid)}. Fix or remove them, or skip invalid files "
                f"(on_invalid=skip, or --skip-invalid on the command line).",
                invalid=report.invalid,
                duplicates=report.duplicates,
            )
        if report.duplicates and on_duplicate == "error":
            raise Conflict(
                f"{counted(report.duplicates, 'file')} already in project {self.project.name!r} or twice in this "
                f"upload, so nothing was imported: {'; '.join(self.duplicate_reasons[:LISTED_IN_MESSAGE])}"
                f"{and_more(self.duplicate_reasons)}. Remove them, or skip duplicates "
                f"(on_duplicate=skip, or --skip-duplicates on the command line).",
                duplicates=report.duplicates,
                invalid=report.invalid,
            )

    def store(self, accepted: list[_Accepted]) -> None:
        blobs = get_blob_store()
        images = []
        for item in accepted:
            blobs.put(item.file.data)
            images.append(
                Image(
                    project_id=self.project.id,
                    content_hash=item.content_hash,
                    filename=posixpath.basename(item.filename),
                    mask_key=blobs.put(item.file.mask) if item.file.mask is not None else None,
                    width=item.width,
                    height=item.height,
                    split=item.split,
                    reference_class_id=item.class_id,
                    meta=_meta(item),
                )
            )
        self.session.add_all(images)
        try:
            self.session.flush()
        except IntegrityError as error:
            raise Conflict(
                "another import added some of these images at the same time; nothing was imported, try again"
            ) from error
        self.report.image_ids += [image.id for image in images]
        self.report.imported_per_split.update(image.split for image in images)


def _batches(files: Iterable[IncomingFile], size: int | None) -> Iterator[list[IncomingFile]]:
    files = iter(files)
    while batch := list(islice(files, size)):
        yield batch


def _meta(item: _Accepted) -> dict:
    """The file's metadata, plus its path when it has folders: the stored filename is only the
    last part, since a class folder in it (Homogeneous/00001.png) would tell annotators the answer."""
    if posixpath.dirname(item.filename):
        return {"path": item.filename, **item.file.meta}
    return dict(item.file.meta)


class _Rejected(Exception):
    def __init__(self, reason: str, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


def _check_file(file: IncomingFile, split: str, channel: str, classes: dict, settings: Settings) -> tuple[str, int, int]:
    """The file's normalised name and the image's (width, height) once every check passed;
    raises _Rejected saying what is wrong."""
    try:
        filename = file_name(file.filename)
    except Invalid as error:
        raise _Rejected(error.message) from error
    # "more than": a file read from disk is cut one byte past the limit
    if len(file.data) > settings.max_image_bytes:
        raise _Rejected(f"the file has more than {settings.max_image_bytes} bytes, the limit per image", True)
    if file.mask is not None and len(file.mask) > settings.max_image_bytes:
        raise _Rejected(f"its mask has more than {settings.max_image_bytes} bytes, the limit per image", True)
    if len(filename) > _MAX_FILENAME:
        raise _Rejected(f"the file name is longer than {_MAX_FILENAME} characters")
    if file.reference_class and file.reference_class.casefold() not in classes:
        known = ", ".join(c.name for c in classes.values())
        raise _Rejected(f"unknown class {file.reference_class!r}; the project's classes are {known}")
    if split == "test" and not file.reference_class:
        raise _Rejected("a test image needs a reference class (a class folder or a class column in labels.csv)")
    try:
        width, height = _dimensions(file.data, channel, settings)
    except InvalidImage as error:
        raise _Rejected(str(error)) from error
    if file.mask is not None:
        try:
            mask_size = _dimensions(file.mask, "luminance", settings)
        except InvalidImage as error:
            raise _Rejected(f"its mask is not usable: {error}") from error
        if mask_size != (width, height):
            raise _Rejected(f"its mask is {mask_size[0]}x{mask_size[1]} pixels but the image is {width}x{height}")
    return filename, width, height


def _dimensions(data: bytes, channel: str, settings: Settings) -> tuple[int, int]:
    """(width, height) of the decoded image; raises InvalidImage."""
    pixels = decode_image(data, channel, settings.max_image_pixels)
    return pixels.shape[1], pixels.shape[0]


def _stored_images(session: Session, project: Project, hashes: set[str]) -> dict[str, tuple[int, str]]:
    """content hash -> (image id, filename) of the project's images among `hashes`."""
    found: dict[str, tuple[int, str]] = {}
    ordered = sorted(hashes)
    for start in range(0, len(ordered), 1000):
        rows = session.execute(
            select(Image.content_hash, Image.id, Image.filename).where(
                Image.project_id == project.id, Image.content_hash.in_(ordered[start : start + 1000])
            )
        )
        found.update({content_hash: (image_id, filename) for content_hash, image_id, filename in rows})
    return found
