"""Reading cells from zips and folders, with what a lab's data sets bring beside them.

Layouts understood by `files_from_zip` and `files_from_folder`:
- a `labels.csv` (an image-path column, an optional class column, an optional
  `mask_path`, an optional `split` column, any other columns kept as metadata): the CSV is
  the list of images;
- otherwise every image file, flat or one folder per class (`<Class>/<file>`);
- a mask is `<stem>_Mask.<ext>` or `<stem>_mask.<ext>` beside an image `<stem>.<ext>`.

Used by the API's imports (backend.services.imports) and by the workers' experiments that read
a labeled folder outside any project (`xal simulate`, `xal pretrain`, `xal roar`).
"""

import csv
import io
import os
import posixpath
import re
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backend.core.errors import Invalid, PayloadTooLarge
from backend.core.settings import Settings, get_settings

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
LABELS_CSV = "labels.csv"
PATH_COLUMNS = ("image_path", "path", "file", "filename")
CLASS_COLUMNS = ("pattern", "class", "label")
MASK_COLUMN = "mask_path"
SPLIT_COLUMN = "split"
# a data set's own split, as a project takes it: its training cells are the pool to label
CSV_SPLITS = {"train": "pool", "pool": "pool", "test": "test"}
# DEFLATE cannot exceed ~1032:1; a member near that is a run of identical bytes, not a cell.
MAX_COMPRESSION_RATIO = 1000
_RATIO_CHECK_FROM_BYTES = 1024 * 1024
_JUNK_NAMES = {"thumbs.db", "desktop.ini"}
LISTED_IN_MESSAGE = 10  # problems named in one error message


def counted(items: list, noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")


def and_more(items: list) -> str:
    return f" (and {len(items) - LISTED_IN_MESSAGE} more)" if len(items) > LISTED_IN_MESSAGE else ""


@dataclass
class IncomingFile:
    filename: str
    data: bytes
    reference_class: str | None = None
    mask: bytes | None = None
    meta: dict = field(default_factory=dict)
    split: str | None = None  # "pool" or "test" where its labels.csv says; else the import's


def files_from_zip(
    data: bytes, settings: Settings, *, class_names: Collection[str] | None = None, name: str = "the zip file"
) -> list[IncomingFile]:
    """The images of a zip archive (see the module docstring for layouts), read with size caps.

    `class_names`: a class folder counts only when its name is one of them (any case);
    None takes every parent folder's name as the class. Raises Invalid or
    PayloadTooLarge, naming the archive and the member, for anything unsafe.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise Invalid(f"{name} is not a zip file or is corrupt: {error}") from error
    with archive:
        members = archive.infolist()
        if len(members) > settings.max_zip_members:
            raise PayloadTooLarge(f"{name} has {len(members)} entries, at most {settings.max_zip_members} are accepted")
        unpacked = sum(member.file_size for member in members)
        if unpacked > settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"{name} would unpack to {unpacked} bytes, at most {settings.max_upload_bytes} are accepted"
            )
        files: dict[str, zipfile.ZipInfo] = {}
        for member in members:
            path = _safe_member_path(member.filename, name)
            if member.is_dir() or _is_junk(path):
                continue
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise Invalid(f"{name} contains a symbolic link, {member.filename!r}; links are not accepted")
            files[path] = member
        source = _ZipSource(archive, files, settings.max_image_bytes, name)
        return list(_files(source, _entries(source, _class_lookup(class_names))))


def files_from_folder(
    folder: Path, labels_csv: Path | None, *, class_names: Collection[str] | None = None
) -> Iterator[IncomingFile]:
    """The images of a folder, read one at a time; `len()` of the result is their number.

    With `labels_csv` (or a `labels.csv` in `folder`) the CSV lists the images, by paths
    relative to the CSV's own folder; otherwise every image file under `folder`.
    Everything that can be checked without reading the images (the CSV's columns, that
    each file exists) is checked here, before the first file is read.
    """
    folder = Path(folder)
    if labels_csv is None and (folder / LABELS_CSV).is_file():
        labels_csv = folder / LABELS_CSV
    if labels_csv is not None:
        labels_csv = Path(labels_csv)
        if not labels_csv.is_file():
            raise Invalid(f"the labels file {labels_csv} does not exist")
        source = _FolderSource(labels_csv.parent, get_settings().max_image_bytes)
        entries = _entries_from_labels(source, labels_csv.name)
    else:
        if not folder.is_dir():
            raise Invalid(f"{folder} is not a folder")
        source = _FolderSource(folder, get_settings().max_image_bytes)
        entries = _entries(source, _class_lookup(class_names))
    return _SizedIterator(_files(source, entries), len(entries))


@dataclass
class _Entry:
    """An image found in a zip or folder, before its bytes are read."""

    image: str  # path inside the source, "/"-separated
    mask: str | None
    reference_class: str | None
    meta: dict
    split: str | None = None


class _ZipSource:
    def __init__(self, archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], limit: int, name: str):
        self.archive, self.members, self.limit, self.name = archive, members, limit, name

    def paths(self) -> list[str]:
        return sorted(self.members)

    def exists(self, path: str) -> bool:
        return path in self.members

    def read(self, path: str) -> bytes:
        member = self.members[path]
        where = f"{self.name}: {member.filename}"
        if member.flag_bits & 0x1:
            raise Invalid(f"{where} is encrypted; encrypted zips are not accepted")
        if member.file_size > self.limit:
            raise PayloadTooLarge(f"{where} unpacks to {member.file_size} bytes, at most {self.limit} per file")
        if member.file_size > _RATIO_CHECK_FROM_BYTES and member.file_size > MAX_COMPRESSION_RATIO * max(
            member.compress_size, 1
        ):
            raise Invalid(
                f"{where} is compressed {member.file_size // max(member.compress_size, 1)}:1, "
                f"which no image is; the archive looks like a zip bomb"
            )
        try:
            with self.archive.open(member) as stream:
                # never trust the header: read at most one byte past the limit
                data = stream.read(self.limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as error:
            raise Invalid(f"{where} cannot be unpacked: {error}") from error
        if len(data) > self.limit:
            raise PayloadTooLarge(f"{where} unpacks to more than {self.limit} bytes, the limit per file")
        return data

    def describe(self, path: str) -> str:
        return f"{self.name}: {path}"


class _FolderSource:
    def __init__(self, root: Path, limit: int):
        self.root, self.limit, self.name = root, limit, str(root)

    def paths(self) -> list[str]:
        found = []
        for directory, subdirectories, filenames in os.walk(self.root):
            subdirectories[:] = sorted(d for d in subdirectories if not _is_junk(d))
            relative = Path(directory).relative_to(self.root).as_posix()
            for filename in sorted(filenames):
                path = filename if relative == "." else f"{relative}/{filename}"
                if not _is_junk(path):
                    found.append(path)
        return found

    def exists(self, path: str) -> bool:
        return (self.root / path).is_file()

    def read(self, path: str) -> bytes:
        # one byte past the limit is enough for import_images to call the file too large
        try:
            with open(self.root / path, "rb") as f:
                return f.read(self.limit + 1)
        except OSError as error:
            raise Invalid(f"cannot read {self.root / path}: {error.strerror or error}") from error

    def describe(self, path: str) -> str:
        return str(self.root / path)


class _SizedIterator(Iterator[IncomingFile]):
    def __init__(self, items: Iterator[IncomingFile], length: int):
        self._items, self._length = items, length

    def __next__(self) -> IncomingFile:
        return next(self._items)

    def __len__(self) -> int:
        return self._length


def _files(source, entries: list[_Entry]) -> Iterator[IncomingFile]:
    for entry in entries:
        yield IncomingFile(
            filename=entry.image,
            data=source.read(entry.image),
            reference_class=entry.reference_class,
            mask=source.read(entry.mask) if entry.mask else None,
            meta=entry.meta,
            split=entry.split,
        )


def _entries(source, class_lookup: dict[str, str] | None) -> list[_Entry]:
    """From a labels.csv when the source has one, else every image file with its mask and class folder."""
    paths = source.paths()
    csvs = [path for path in paths if posixpath.basename(path).casefold() == LABELS_CSV]
    if len(csvs) > 1:
        raise Invalid(f"{source.name} has {len(csvs)} labels.csv files ({', '.join(csvs)}); keep one")
    if csvs:
        return _entries_from_labels(source, csvs[0])
    images = [path for path in paths if _is_image_name(path)]
    masks = {}
    stems: dict[tuple[str, str], list[str]] = {}
    for path in images:
        directory, filename = posixpath.split(path)
        stems.setdefault((directory, posixpath.splitext(filename)[0]), []).append(path)
    for path in images:
        directory, filename = posixpath.split(path)
        stem = posixpath.splitext(filename)[0]
        if stem.casefold().endswith("_mask"):
            for partner in stems.get((directory, stem[: -len("_mask")]), []):
                masks[partner] = path
    mask_paths = set(masks.values())
    entries = [
        _Entry(path, masks.get(path), _folder_class(path, class_lookup), {}) for path in images if path not in mask_paths
    ]
    if not entries:
        raise Invalid(f"{source.name} contains no image files ({', '.join(IMAGE_SUFFIXES)})")
    return entries


def _entries_from_labels(source, csv_path: str) -> list[_Entry]:
    where = source.describe(csv_path)
    base = posixpath.dirname(csv_path)
    data = source.read(csv_path)
    if len(data) > source.limit:
        raise PayloadTooLarge(f"{where} is larger than {source.limit} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise Invalid(f"{where} is not UTF-8 text: {error}") from error
    lines = io.StringIO(text, newline="")
    reader = csv.DictReader(lines, delimiter=_delimiter(text))
    try:
        header = [name for name in (reader.fieldnames or []) if name is not None]
        columns = {name.strip().casefold(): name for name in header}
        path_column = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
        if path_column is None:
            raise Invalid(
                f"{where} has no image-path column: name one {', '.join(PATH_COLUMNS)} "
                f"(its columns are: {', '.join(header) or 'none'})"
            )
        class_column = next((columns[c] for c in CLASS_COLUMNS if c in columns), None)
        mask_column = columns.get(MASK_COLUMN)
        split_column = columns.get(SPLIT_COLUMN)
        meta_columns = [name for name in header if name not in (path_column, class_column, mask_column, split_column)]
        entries, problems = [], []
        for row in reader:
            line = reader.line_num
            image_ref = (row.get(path_column) or "").strip()
            if not image_ref:
                problems.append(f"line {line}: no image path")
                continue
            image = _inside(base, image_ref)
            if image is None:
                problems.append(f"line {line}: {image_ref!r} lies outside the CSV's folder")
                continue
            if not source.exists(image):
                problems.append(f"line {line}: {image_ref!r} does not exist")
                continue
            mask_ref = (row.get(mask_column) or "").strip() if mask_column else ""
            if mask_ref:
                mask = _inside(base, mask_ref)
                if mask is None:
                    problems.append(f"line {line}: mask {mask_ref!r} lies outside the CSV's folder")
                    continue
                if not source.exists(mask):
                    problems.append(f"line {line}: mask {mask_ref!r} does not exist")
                    continue
            else:
                mask = None if mask_column else _mask_beside(source, image)
            split_value = (row.get(split_column) or "").strip() if split_column else ""
            split = CSV_SPLITS.get(split_value.casefold()) if split_value else None
            if split_value and split is None:
                problems.append(
                    f"line {line}: unknown split {split_value!r}; a split is one of {', '.join(CSV_SPLITS)} "
                    f"(train goes to the pool) or empty (the import's split)"
                )
                continue
            reference_class = (row.get(class_column) or "").strip() if class_column else ""
            meta = {name: row[name].strip() for name in meta_columns if (row.get(name) or "").strip()}
            entries.append(_Entry(image, mask, reference_class or None, meta, split))
    except csv.Error as error:
        raise Invalid(f"{where} is not a readable CSV file (line {reader.line_num}): {error}") from error
    if problems:
        raise Invalid(
            f"{where}: {counted(problems, 'row')} cannot be used, so nothing was imported: "
            f"{'; '.join(problems[:LISTED_IN_MESSAGE])}{and_more(problems)}",
            problems=problems,
        )
    if not entries:
        raise Invalid(f"{where} lists no images")
    return entries


def _delimiter(text: str) -> str:
    """Comma, or what a spreadsheet wrote instead (semicolons, tabs), as the header shows. Only the
    delimiter is guessed: the rest is the standard dialect, whose doubled quotes ("we""ird.png")
    the header alone would not show."""
    try:
        return csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def _inside(base: str, reference: str) -> str | None:
    """`reference` (relative to `base`) as a path inside the source, or None when it escapes it."""
    reference = reference.replace("\\", "/")
    if not reference or reference.startswith("/") or re.match(r"[A-Za-z]:", reference):
        return None
    path = posixpath.normpath(posixpath.join(base, reference))
    inside = path.startswith(base + "/") if base else path != ".." and not path.startswith("../")
    return path if inside else None


def _mask_beside(source, image: str) -> str | None:
    stem, suffix = posixpath.splitext(image)
    for mask_suffix in (suffix, *IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES)):
        for marker in ("_Mask", "_mask"):
            if source.exists(stem + marker + mask_suffix):
                return stem + marker + mask_suffix
    return None


def _safe_member_path(raw: str, archive_name: str) -> str:
    path = raw.replace("\\", "/")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path) or ".." in path.split("/"):
        raise Invalid(f"{archive_name} contains an unsafe path, {raw!r} (absolute or with '..'); nothing was imported")
    return posixpath.normpath(path)


def _is_junk(path: str) -> bool:
    parts = path.split("/")
    return any(part.startswith(".") or part == "__MACOSX" for part in parts) or parts[-1].casefold() in _JUNK_NAMES


def _is_image_name(path: str) -> bool:
    return path.casefold().endswith(IMAGE_SUFFIXES)


def _class_lookup(class_names: Collection[str] | None) -> dict[str, str] | None:
    return None if class_names is None else {name.casefold(): name for name in class_names}


def _folder_class(path: str, class_lookup: dict[str, str] | None) -> str | None:
    directory = posixpath.dirname(path)
    if not directory:
        return None
    folder = posixpath.basename(directory)
    return folder if class_lookup is None else class_lookup.get(folder.casefold())
