"""Importing cells: folders with labels.csv, class folders, zips, masks, every bad input.

Real I3A cells are read in place (tests/conftest.py); zips are built in memory. Every
rejected import must leave the project's image count exactly as it was."""

import csv
import io
import struct
import uuid
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from tests.conftest import balanced_sample, make_user

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


@pytest.fixture
def project_id(service_env) -> int:
    from backend.core.db.models import Project, ProjectClass
    from backend.core.db.session import new_session

    with new_session() as session:
        project = Project(
            name=f"imports-{uuid.uuid4().hex[:8]}",
            classes=[ProjectClass(name=name, key=str(i + 1), position=i) for i, name in enumerate(CLASSES)],
        )
        session.add(project)
        session.commit()
        return project.id


@pytest.fixture
def cells(i3a_dir, i3a_rows) -> list[dict]:
    """Two real cells of each class, with their bytes, mask bytes and class."""
    return [
        {
            "name": row["image_path"].split("/")[-1],
            "path": row["image_path"],
            "class": row["pattern"],
            "data": (i3a_dir / row["image_path"]).read_bytes(),
            "mask": (i3a_dir / row["mask_path"]).read_bytes(),
            "mask_path": row["mask_path"],
            "image_id": row["image_id"],
        }
        for row in balanced_sample(i3a_rows, per_class=2, offset=50)
    ]


def image_count(project_id: int, split: str | None = None) -> int:
    from backend.core.db.models import Image
    from backend.core.db.session import new_session

    query = select(func.count(Image.id)).where(Image.project_id == project_id)
    if split:
        query = query.where(Image.split == split)
    with new_session() as session:
        return session.scalar(query)


def stored_images(project_id: int) -> list:
    from backend.core.db.models import Image
    from backend.core.db.session import new_session

    with new_session() as session:
        return session.scalars(select(Image).where(Image.project_id == project_id).order_by(Image.id)).all()


def class_names_by_id(project_id: int) -> dict[int, str]:
    from backend.core.db.models import ProjectClass
    from backend.core.db.session import new_session

    with new_session() as session:
        return dict(
            session.execute(select(ProjectClass.id, ProjectClass.name).where(ProjectClass.project_id == project_id)).all()
        )


def upload(client, headers, project_id, files: list[tuple[str, bytes]], **form):
    return client.post(
        f"/api/projects/{project_id}/images",
        headers=headers,
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        data=form,
    )


def make_zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_declared_size(zip_bytes: bytes, size: int) -> bytes:
    """The one-member zip with its uncompressed size rewritten in both headers: a lying archive."""
    data = bytearray(zip_bytes)
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, size)
    struct.pack_into("<I", data, central + 24, size)
    return bytes(data)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost none of them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_labels(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# --- folders and the CLI --------------------------------------------------------------------


def test_folder_import_with_labels_csv_keeps_class_mask_and_metadata(project_id, i3a_dir, i3a_rows, tmp_path, monkeypatch):
    from backend import cli_import
    from backend.core.blobs import get_blob_store

    monkeypatch.setattr(cli_import, "BATCH_SIZE", 7)  # several flushes in one transaction
    (tmp_path / "cells").symlink_to(i3a_dir)
    rows = balanced_sample(i3a_rows, per_class=5)
    write_labels(
        tmp_path / "subset.csv",
        [
            {
                "image_id": r["image_id"],
                "pattern": r["pattern"],
                "image_path": f"cells/{r['image_path']}",
                "mask_path": f"cells/{r['mask_path']}",
                "specimen": "s7",
            }
            for r in rows
        ],
    )

    report = cli_import.run_import(str(project_id), tmp_path, tmp_path / "subset.csv", "pool", "error", "error")

    assert len(report.image_ids) == 30 and not report.duplicates and not report.invalid
    classes = class_names_by_id(project_id)
    blobs = get_blob_store()
    images = stored_images(project_id)
    assert len(images) == 30
    for image, row in zip(images, rows):
        original = (i3a_dir / row["image_path"]).read_bytes()
        with PILImage.open(i3a_dir / row["image_path"]) as pil:
            assert (image.width, image.height) == pil.size
        assert blobs.get(image.content_hash) == original
        assert blobs.get(image.mask_key) == (i3a_dir / row["mask_path"]).read_bytes()
        assert classes[image.reference_class_id] == row["pattern"]
        assert image.split == "pool"
        # the class folder stays out of the visible file name
        assert image.filename == row["image_path"].split("/")[-1]
        assert image.meta == {"path": f"cells/{row['image_path']}", "image_id": row["image_id"], "specimen": "s7"}


def test_cli_import_by_project_name_is_all_or_nothing_across_batches(project_id, i3a_dir, i3a_rows, tmp_path, monkeypatch):
    from backend import cli_import
    from backend.core.errors import Invalid

    monkeypatch.setattr(cli_import, "BATCH_SIZE", 7)
    (tmp_path / "cells").symlink_to(i3a_dir)
    rows = [{"pattern": r["pattern"], "path": f"cells/{r['image_path']}"} for r in balanced_sample(i3a_rows, per_class=4)]
    rows[-1]["pattern"] = "Mitotic"  # the 24th file, in the 4th batch
    write_labels(tmp_path / "labels.csv", rows)
    name = stored_project_name(project_id)

    with pytest.raises(Invalid) as error:
        cli_import.run_import(name, tmp_path, None, "pool", "error", "error")  # labels.csv found in the folder

    assert "unknown class 'Mitotic'" in error.value.message
    assert rows[-1]["path"] in error.value.message
    assert "nothing was imported" in error.value.message
    assert image_count(project_id) == 0


def stored_project_name(project_id: int) -> str:
    from backend.core.db.models import Project
    from backend.core.db.session import new_session

    with new_session() as session:
        return session.get(Project, project_id).name


def test_folder_per_class_layout_pairs_masks_and_ignores_os_junk(project_id, cells, tmp_path):
    from backend.cli_import import run_import

    for cell in cells:
        folder = tmp_path / cell["class"]
        folder.mkdir(exist_ok=True)
        (folder / cell["name"]).write_bytes(cell["data"])
        (folder / cell["mask_path"].split("/")[-1]).write_bytes(cell["mask"])
    (tmp_path / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "Golgi" / "Thumbs.db").write_bytes(b"\0junk")
    (tmp_path / "__MACOSX" / "Golgi").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "Golgi" / f"._{cells[0]['name']}").write_bytes(b"\0junk")
    (tmp_path / "notes.txt").write_text("not a cell")

    report = run_import(str(project_id), tmp_path, None, "test", "error", "error")

    assert len(report.image_ids) == len(cells) == 12
    classes = class_names_by_id(project_id)
    by_path = {image.meta["path"]: image for image in stored_images(project_id)}
    assert set(by_path) == {f"{c['class']}/{c['name']}" for c in cells}
    for cell in cells:
        image = by_path[f"{cell['class']}/{cell['name']}"]
        assert classes[image.reference_class_id] == cell["class"]
        assert image.mask_key is not None and image.split == "test"


def test_flat_folder_imports_every_image_without_a_class(project_id, cells, tmp_path):
    from backend.cli_import import run_import

    for cell in cells[:4]:
        (tmp_path / cell["name"]).write_bytes(cell["data"])
    (tmp_path / cells[0]["name"].replace(".png", "_Mask.png")).write_bytes(cells[0]["mask"])

    report = run_import(str(project_id), tmp_path, None, "pool", "error", "error")

    images = stored_images(project_id)
    assert len(report.image_ids) == 4
    assert all(image.reference_class_id is None for image in images)
    assert {image.filename for image in images if image.mask_key} == {cells[0]["name"]}


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"name": "x.png", "pattern": "Golgi"}], "no image-path column"),
        ([{"image_path": "Golgi/missing.png", "pattern": "Golgi"}], "line 2: 'Golgi/missing.png' does not exist"),
        ([{"image_path": "../outside.png", "pattern": "Golgi"}], "lies outside the CSV's folder"),
        ([{"image_path": "/etc/passwd", "pattern": "Golgi"}], "lies outside the CSV's folder"),
        (
            [{"image_path": "Golgi/cell.png", "mask_path": "Golgi/none_Mask.png"}],
            "mask 'Golgi/none_Mask.png' does not exist",
        ),
        ([{"image_path": "Golgi/cell.png", "pattern": "Mitotic"}], "unknown class 'Mitotic'"),
    ],
)
def test_a_bad_labels_csv_is_refused_with_the_row_and_reason(project_id, cells, tmp_path, rows, message):
    from backend.cli_import import run_import
    from backend.core.errors import Invalid

    (tmp_path / "Golgi").mkdir()
    (tmp_path / "Golgi" / "cell.png").write_bytes(cells[0]["data"])
    write_labels(tmp_path / "labels.csv", rows)

    with pytest.raises(Invalid) as error:
        run_import(str(project_id), tmp_path, tmp_path / "labels.csv", "pool", "error", "error")

    assert message in error.value.message
    assert image_count(project_id) == 0


def test_reimporting_a_folder_with_skip_duplicates_adds_nothing(project_id, cells, tmp_path):
    from backend.cli_import import run_import
    from backend.core.errors import Conflict

    for cell in cells:
        (tmp_path / cell["name"]).write_bytes(cell["data"])
    first = run_import(str(project_id), tmp_path, None, "pool", "error", "error")
    with pytest.raises(Conflict, match="already in project"):
        run_import(str(project_id), tmp_path, None, "pool", "error", "error")
    again = run_import(str(project_id), tmp_path, None, "pool", "skip", "error")

    assert len(first.image_ids) == 12
    assert again.image_ids == [] and sorted(again.duplicates) == sorted(c["name"] for c in cells)
    assert image_count(project_id) == 12


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_a_labels_csv_with_quoted_names_is_read_as_the_csv_module_writes_it(project_id, cells, tmp_path, delimiter):
    from backend.cli_import import run_import

    names = ['we"ird,name.png', 'semi;colon "quoted".png', "plain.png"]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["image_path", "pattern"])
        for name, cell in zip(names, cells):
            (tmp_path / name).write_bytes(cell["data"])
            writer.writerow([name, cell["class"]])
    assert '"we""ird,name.png"' in (tmp_path / "labels.csv").read_text()

    run_import(str(project_id), tmp_path, None, "pool", "error", "error")

    classes = class_names_by_id(project_id)
    stored = {image.filename: classes[image.reference_class_id] for image in stored_images(project_id)}
    assert stored == {name: cell["class"] for name, cell in zip(names, cells)}


def test_a_labels_csv_split_column_imports_a_data_sets_train_and_test_in_one_go(project_id, cells, tmp_path):
    from backend.cli_import import run_import

    splits = ["train", "Test", "pool", ""]  # "" takes the import's split
    rows = [
        {"image_path": c["name"], "pattern": c["class"], "split": splits[i % 4], "stain": "IgG"} for i, c in enumerate(cells)
    ]
    for cell in cells:
        (tmp_path / cell["name"]).write_bytes(cell["data"])
    write_labels(tmp_path / "labels.csv", rows)

    report = run_import(str(project_id), tmp_path, None, "pool", "error", "error")

    assert report.imported_per_split == {"pool": 9, "test": 3}
    classes = class_names_by_id(project_id)
    by_name = {image.filename: image for image in stored_images(project_id)}
    for row in rows:
        image = by_name[row["image_path"]]
        assert image.split == ("test" if row["split"] == "Test" else "pool")
        assert classes[image.reference_class_id] == row["pattern"]  # the test split's reference class
        assert image.meta == {"stain": "IgG"}


def test_the_duplicate_error_counts_every_duplicate_of_a_batched_import(project_id, cells, tmp_path, monkeypatch):
    from backend import cli_import
    from backend.core.errors import Conflict

    for cell in cells:
        (tmp_path / cell["name"]).write_bytes(cell["data"])
    cli_import.run_import(str(project_id), tmp_path, None, "pool", "error", "error")
    (tmp_path / "new.png").write_bytes(encoded(np.full((40, 40), 7, np.uint8), "PNG"))
    monkeypatch.setattr(cli_import, "BATCH_SIZE", 5)  # 13 files: three batches

    with pytest.raises(Conflict) as error:
        cli_import.run_import(str(project_id), tmp_path, None, "pool", "error", "error")

    assert error.value.message.startswith(f"12 files already in project {stored_project_name(project_id)!r}")
    assert "(and 2 more)" in error.value.message
    assert len(error.value.details["duplicates"]) == 12
    assert image_count(project_id) == 12


def test_file_names_are_stored_in_nfkc_and_a_dot_dot_part_is_refused(project_id, cells, db):
    from backend.core.errors import Invalid
    from backend.core.readers import IncomingFile
    from backend.services.imports import import_images
    from backend.services.projects import find_project

    project = find_project(db, project_id)
    files = [IncomingFile("ｃｅｌｌ one.png", cells[0]["data"]), IncomingFile("cells/../two.png", cells[1]["data"])]
    with pytest.raises(Invalid, match=r"cells/\.\./two.png: file name 'cells/\.\./two.png' has a '\.\.' part"):
        import_images(db, project, files)
    db.rollback()
    assert image_count(project_id) == 0

    import_images(db, project, files[:1])
    db.commit()
    assert [image.filename for image in stored_images(project_id)] == ["cell one.png"]


# --- uploads over HTTP ------------------------------------------------------------------------


def test_upload_of_a_zip_with_class_folders_masks_and_junk(app_client, admin_headers, project_id, cells):
    members = {}
    for cell in cells:
        members[f"batch/{cell['class']}/{cell['name']}"] = cell["data"]
        members[f"batch/{cell['class']}/{cell['mask_path'].split('/')[-1]}"] = cell["mask"]
    members["__MACOSX/batch/._x.png"] = b"junk"
    members["batch/.DS_Store"] = b"junk"
    members["batch/README.txt"] = b"cells of March"

    response = upload(app_client, admin_headers, project_id, [("march.zip", make_zip(members))], split="test")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["imported"] == 12 and body["duplicates"] == [] and body["invalid"] == []
    classes = class_names_by_id(project_id)
    images = stored_images(project_id)
    assert sorted(classes[i.reference_class_id] for i in images) == sorted(c["class"] for c in cells)
    assert all(i.mask_key and i.split == "test" for i in images)
    assert image_count(project_id, "test") == 12


def test_upload_of_a_zip_with_labels_csv(app_client, admin_headers, project_id, cells):
    members = {f"all/{c['image_id']}.png": c["data"] for c in cells}
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", "class", "intensity"])
    for cell in cells:
        writer.writerow([f"{cell['image_id']}.png", cell["class"].lower(), "positive"])
    members["all/labels.csv"] = table.getvalue().encode()

    response = upload(app_client, admin_headers, project_id, [("labeled.zip", make_zip(members))])

    assert response.status_code == 201, response.text
    classes = class_names_by_id(project_id)
    images = stored_images(project_id)
    assert len(images) == 12
    by_id = {c["image_id"]: c["class"] for c in cells}
    for image in images:
        assert classes[image.reference_class_id] == by_id[image.filename.removesuffix(".png")]  # any case
        assert image.meta["intensity"] == "positive"


def test_16_bit_tiff_and_rgb_png_are_imported_and_served_as_uploaded(app_client, admin_headers, project_id):
    rng = np.random.default_rng(0)
    tiff = encoded(rng.integers(0, 4096, (70, 90), dtype=np.uint16), "TIFF")
    rgb = encoded(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8), "PNG")

    response = upload(app_client, admin_headers, project_id, [("cell16.tif", tiff), ("colour.png", rgb)])

    assert response.status_code == 201, response.text
    tiff_id, rgb_id = response.json()["image_ids"]
    base = f"/api/projects/{project_id}/images"
    info = app_client.get(f"{base}/{tiff_id}", headers=admin_headers).json()
    assert (info["width"], info["height"], info["has_mask"]) == (90, 70, False)
    assert app_client.get(f"{base}/{rgb_id}", headers=admin_headers).json()["width"] == 50
    for image_id, data, media_type in ((tiff_id, tiff, "image/tiff"), (rgb_id, rgb, "image/png")):
        served = app_client.get(f"{base}/{image_id}/file", headers=admin_headers)
        assert served.status_code == 200 and served.content == data
        assert served.headers["content-type"] == media_type
        assert "immutable" in served.headers["cache-control"]
    mask = app_client.get(f"{base}/{tiff_id}/mask", headers=admin_headers)
    assert mask.status_code == 404 and "no mask" in mask.json()["detail"]


def test_a_mask_is_served_with_its_image(app_client, admin_headers, project_id, cells):
    cell = cells[0]
    archive = make_zip({cell["name"]: cell["data"], cell["name"].replace(".png", "_mask.png"): cell["mask"]})
    response = upload(app_client, admin_headers, project_id, [("one.zip", archive)])
    assert response.status_code == 201, response.text
    image_id = response.json()["image_ids"][0]
    mask = app_client.get(f"/api/projects/{project_id}/images/{image_id}/mask", headers=admin_headers)
    assert mask.status_code == 200 and mask.content == cell["mask"]
    assert mask.headers["content-type"] == "image/png"


ZEROS = b"\0" * (25 * 1024 * 1024)

# name -> cell -> (files, form fields, status, fragments the message must contain)
BAD_UPLOADS = {
    "corrupt image": lambda cell: (
        [("cut.png", cell["data"][: len(cell["data"]) // 2])],
        {},
        422,
        ["cut.png", "corrupt or truncated"],
    ),
    "not an image": lambda cell: ([("notes.png", b"these are my notes")], {}, 422, ["notes.png", "not an image"]),
    "empty file": lambda cell: ([("empty.png", b"")], {}, 422, ["empty.png", "empty"]),
    "too many pixels": lambda cell: (
        [("huge.png", png_header(50000, 50000))],
        {},
        422,
        ["huge.png", "too large", "2500000000 pixels"],
    ),
    "more pixels than the settings allow": lambda cell: (
        [("big.png", png_header(5000, 5000))],
        {},
        422,
        ["big.png", "5000x5000", "at most 16777216"],
    ),
    "not a zip": lambda cell: (
        [("cells.zip", b"PK\x03\x04 but not really a zip")],
        {},
        422,
        ["cells.zip", "not a zip file"],
    ),
    "zip without images": lambda cell: (
        [("empty.zip", make_zip({"readme.txt": b"hi"}))],
        {},
        422,
        ["empty.zip", "no image files"],
    ),
    "zip with nothing at all": lambda cell: ([("nothing.zip", make_zip({}))], {}, 422, ["nothing.zip", "no image files"]),
    "zip path traversal": lambda cell: (
        [("evil.zip", make_zip({"../../etc/cell.png": cell["data"]}))],
        {},
        422,
        ["evil.zip", "unsafe path", "../../etc/cell.png"],
    ),
    "zip absolute path": lambda cell: (
        [("abs.zip", make_zip({"/tmp/cell.png": cell["data"]}))],
        {},
        422,
        ["abs.zip", "unsafe path"],
    ),
    "zip bomb, declared": lambda cell: (
        [("bomb.zip", make_zip({"bomb.png": ZEROS}))],
        {},
        413,
        ["bomb.zip", "bomb.png", "unpacks to 26214400 bytes"],
    ),
    "zip bomb, huge total": lambda cell: (
        [("total.zip", with_declared_size(make_zip({"a.png": cell["data"]}), 2**32 - 1))],
        {},
        413,
        ["total.zip", "would unpack to"],
    ),
    "zip bomb, compression ratio": lambda cell: (
        [("ratio.zip", make_zip({"r.png": ZEROS[: 8 * 2**20]}, zipfile.ZIP_BZIP2))],
        {},
        422,
        ["ratio.zip", "r.png", "zip bomb"],
    ),
    "zip that lies about its size": lambda cell: (
        [("liar.zip", with_declared_size(make_zip({"l.png": ZEROS[: 2**20]}), 100))],
        {},
        422,
        ["liar.zip", "l.png", "cannot be unpacked"],
    ),
    "mask of another size": lambda cell: (
        [("m.zip", make_zip({"c.png": cell["data"], "c_Mask.png": encoded(np.zeros((5, 5), np.uint8), "PNG")}))],
        {},
        422,
        ["c.png", "its mask is 5x5 pixels"],
    ),
    "mask not an image": lambda cell: (
        [("n.zip", make_zip({"c.png": cell["data"], "c_mask.png": b"nope"}))],
        {},
        422,
        ["c.png", "its mask is not usable"],
    ),
    "unknown class": lambda cell: (
        [("k.zip", make_zip({"labels.csv": b"path,pattern\nc.png,Mitotic\n", "c.png": cell["data"]}))],
        {},
        422,
        ["c.png", "unknown class 'Mitotic'", "Homogeneous"],
    ),
    "test split without class": lambda cell: (
        [("plain.png", cell["data"])],
        {"split": "test"},
        422,
        ["plain.png", "needs a reference class"],
    ),
    "duplicate within the upload": lambda cell: (
        [("a.png", cell["data"]), ("b.png", cell["data"])],
        {},
        409,
        ["b.png", "same content as a.png in this upload"],
    ),
    "unknown split": lambda cell: ([("a.png", cell["data"])], {"split": "train"}, 422, ["split"]),
    "unknown split in labels.csv": lambda cell: (
        [("s.zip", make_zip({"labels.csv": b"path,pattern,split\nc.png,Golgi,validation\n", "c.png": cell["data"]}))],
        {},
        422,
        ["line 2: unknown split 'validation'", "train, pool, test"],
    ),
    "bidi override in a file name": lambda cell: (
        [("cell\u202egnp.exe", cell["data"])],
        {},
        422,
        ["'cell\\u202egnp.exe' holds U+202E RIGHT-TO-LEFT OVERRIDE"],
    ),
    "zero-width space in a zip member's name": lambda cell: (
        [("z.zip", make_zip({"ce\u200bll.png": cell["data"]}))],
        {},
        422,
        ["U+200B ZERO WIDTH SPACE"],
    ),
    "a file named '..'": lambda cell: ([("..", cell["data"])], {}, 422, ["file name '..' has a '..' part"]),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_is_refused_with_a_helpful_message_and_stores_nothing(
    app_client, admin_headers, project_id, cells, case
):
    files, form, status, fragments = BAD_UPLOADS[case](cells[0])
    upload(app_client, admin_headers, project_id, [("already.png", cells[1]["data"])])
    before = image_count(project_id)
    assert before == 1

    response = upload(app_client, admin_headers, project_id, files, **form)

    assert response.status_code == status, response.text
    detail = str(response.json()["detail"])
    for fragment in fragments:
        assert fragment in detail, f"{fragment!r} not in {detail!r}"
    assert image_count(project_id) == before


def test_one_bad_file_among_good_ones_stops_the_whole_upload(app_client, admin_headers, project_id, cells):
    files = [(c["name"], c["data"]) for c in cells[:5]] + [("broken.png", b"\x89PNG\r\n\x1a\n garbage")]
    response = upload(app_client, admin_headers, project_id, files)
    assert response.status_code == 422
    body = response.json()
    assert "1 file cannot be imported, so nothing was imported" in body["detail"]
    assert [item["filename"] for item in body["invalid"]] == ["broken.png"]
    assert image_count(project_id) == 0


def test_a_duplicate_of_a_stored_image_is_refused_and_names_it(app_client, admin_headers, project_id, cells):
    first = upload(app_client, admin_headers, project_id, [("first.png", cells[0]["data"])])
    assert first.status_code == 201
    image_id = first.json()["image_ids"][0]

    again = upload(app_client, admin_headers, project_id, [("new.png", cells[1]["data"]), ("copy.png", cells[0]["data"])])

    assert again.status_code == 409
    assert f"copy.png (same content as image {image_id}, first.png)" in again.json()["detail"]
    assert again.json()["duplicates"] == ["copy.png"]
    assert image_count(project_id) == 1


def test_skip_modes_report_the_bad_files_and_import_the_rest(app_client, admin_headers, project_id, cells):
    assert upload(app_client, admin_headers, project_id, [("stored.png", cells[0]["data"])]).status_code == 201
    files = [
        ("good1.png", cells[1]["data"]),
        ("good2.png", cells[2]["data"]),
        ("again.png", cells[1]["data"]),
        ("stored-copy.png", cells[0]["data"]),
        ("broken.png", b"not an image"),
        ("huge.png", png_header(50000, 50000)),
    ]

    response = upload(app_client, admin_headers, project_id, files, on_duplicate="skip", on_invalid="skip")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["imported"] == 2 and len(body["image_ids"]) == 2
    assert body["duplicates"] == ["again.png", "stored-copy.png"]
    assert [item["filename"] for item in body["invalid"]] == ["broken.png", "huge.png"]
    assert "not an image" in body["invalid"][0]["error"]
    assert image_count(project_id) == 3


def test_skipping_duplicates_alone_still_refuses_invalid_files(app_client, admin_headers, project_id, cells):
    files = [("a.png", cells[0]["data"]), ("b.png", cells[0]["data"]), ("bad.png", b"nope")]
    response = upload(app_client, admin_headers, project_id, files, on_duplicate="skip")
    assert response.status_code == 422 and "bad.png" in response.json()["detail"]
    assert image_count(project_id) == 0


def test_limits_from_settings_are_enforced(app_client, admin_headers, project_id, cells, monkeypatch):
    from backend.core.settings import get_settings

    settings = get_settings()
    monkeypatch.setattr(settings, "max_image_bytes", 1000)
    big = upload(app_client, admin_headers, project_id, [("big.png", cells[0]["data"])])
    assert big.status_code == 413 and "big.png: the file has more than 1000 bytes" in big.json()["detail"]

    monkeypatch.setattr(settings, "max_image_bytes", 10**6)
    monkeypatch.setattr(settings, "max_zip_members", 3)
    many = upload(
        app_client, admin_headers, project_id, [("many.zip", make_zip({f"{i}.png": c["data"] for i, c in enumerate(cells)}))]
    )
    assert many.status_code == 413 and "many.zip has 12 entries, at most 3" in many.json()["detail"]

    monkeypatch.setattr(settings, "max_upload_bytes", 2000)
    whole = upload(app_client, admin_headers, project_id, [("c.png", cells[0]["data"]), ("d.png", cells[1]["data"])])
    assert whole.status_code == 413 and "larger than 2000 bytes" in whole.json()["detail"]
    # without a Content-Length the body is counted as it arrives
    body = (
        b'--cut\r\nContent-Disposition: form-data; name="files"; filename="c.png"\r\n\r\n'
        + cells[0]["data"]
        + cells[1]["data"]
        + b"\r\n--cut--\r\n"
    )
    chunked = app_client.post(
        f"/api/projects/{project_id}/images",
        headers={**admin_headers, "Content-Type": "multipart/form-data; boundary=cut"},
        content=iter([body[:1000], body[1000:]]),
    )
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and "larger than 2000 bytes" in chunked.json()["detail"]
    assert image_count(project_id) == 0


def test_only_admins_upload(app_client, project_id, cells):
    _, annotator = make_user("annotator", project_ids=[project_id])
    _, client = make_user("client", project_ids=[project_id])
    for headers in (annotator, client):
        assert upload(app_client, headers, project_id, [("a.png", cells[0]["data"])]).status_code == 403
    assert image_count(project_id) == 0


# --- reading images back ----------------------------------------------------------------------


def test_image_list_filters_and_hides_the_reference_class_from_annotators(app_client, admin_headers, project_id, cells):
    from backend.core.db.models import Label, ProjectClass, User, utcnow
    from backend.core.db.session import new_session

    archive = make_zip({f"{c['class']}/{c['name']}": c["data"] for c in cells})
    image_ids = upload(app_client, admin_headers, project_id, [("p.zip", archive)]).json()["image_ids"]
    extra = upload(app_client, admin_headers, project_id, [("t.png", encoded(np.zeros((8, 8), np.uint8), "PNG"))])
    assert extra.status_code == 201
    annotator_name, annotator = make_user("annotator", project_ids=[project_id])
    _, client = make_user("client", project_ids=[project_id])
    with new_session() as session:
        user_id = session.scalar(select(User.id).where(User.username == annotator_name))
        class_id = {c.name: c.id for c in session.scalars(select(ProjectClass).where(ProjectClass.project_id == project_id))}
        now = utcnow()
        session.add_all(
            [
                Label(project_id=project_id, image_id=image_ids[0], class_id=class_id["Golgi"], user_id=user_id),
                Label(
                    project_id=project_id,
                    image_id=image_ids[1],
                    class_id=class_id["Golgi"],
                    user_id=user_id,
                    superseded_at=now,
                ),
                Label(project_id=project_id, image_id=image_ids[1], class_id=class_id["NuMem"], user_id=user_id),
                Label(
                    project_id=project_id,
                    image_id=image_ids[2],
                    class_id=class_id["Golgi"],
                    user_id=user_id,
                    retracted_at=now,
                ),
            ]
        )
        session.commit()
    base = f"/api/projects/{project_id}/images"

    def page(headers, **params):
        response = app_client.get(base, headers=headers, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    everything = page(admin_headers)
    assert everything["total"] == 13
    first = everything["items"][0]
    assert first["id"] == image_ids[0] and first["label"] == "Golgi"
    assert first["reference_class"] == cells[0]["class"] and first["meta"]["path"].startswith(cells[0]["class"])
    assert first["filename"] == cells[0]["name"]
    assert page(client)["items"][0]["reference_class"] == cells[0]["class"]
    for item in page(annotator)["items"]:
        assert item["reference_class"] is None and item["meta"] == {}
    assert [i["id"] for i in page(admin_headers, status="labeled")["items"]] == image_ids[:2]
    assert page(admin_headers, status="unlabeled")["total"] == 11
    assert [i["label"] for i in page(annotator, class_name="NuMem")["items"]] == ["NuMem"]
    assert page(admin_headers, split="test")["total"] == 0
    paged = page(admin_headers, limit=5, offset=10)
    assert paged["total"] == 13 and [i["id"] for i in paged["items"]] == image_ids[10:] + extra.json()["image_ids"]
    unknown = app_client.get(base, headers=admin_headers, params={"class_name": "Mitotic"})
    assert unknown.status_code == 422 and "no class 'Mitotic'" in unknown.json()["detail"]

    one = app_client.get(f"{base}/{image_ids[1]}", headers=annotator).json()
    assert one["label"] == "NuMem" and one["reference_class"] is None
    assert app_client.get(f"{base}/{image_ids[1]}", headers=admin_headers).json()["reference_class"] == cells[1]["class"]


def test_an_image_of_another_project_is_not_found_there(app_client, admin_headers, project_id, cells, service_env):
    from backend.core.db.models import Project, ProjectClass
    from backend.core.db.session import new_session

    image_id = upload(app_client, admin_headers, project_id, [("a.png", cells[0]["data"])]).json()["image_ids"][0]
    with new_session() as session:
        other = Project(
            name=f"other-{uuid.uuid4().hex[:8]}",
            classes=[ProjectClass(name=n, key=str(i), position=i) for i, n in enumerate("ab")],
        )
        session.add(other)
        session.commit()
        other_id = other.id
    for suffix in ("", "/file", "/mask"):
        response = app_client.get(f"/api/projects/{other_id}/images/{image_id}{suffix}", headers=admin_headers)
        assert response.status_code == 404, suffix
        assert f"no image {image_id}" in response.json()["detail"]
    # the same content is welcome in another project
    assert upload(app_client, admin_headers, other_id, [("a.png", cells[0]["data"])]).status_code == 201
