"""What the queue, a round's selections, a cell's maps and the label export show, and to whom:
no hints before a blind label, a label beside every labeled cell, the imported path of every
file, and no formula a spreadsheet would run. Round 0 is computed in-process (no worker)."""

import csv
import io
import uuid

import pytest

from backend.services.exports import spreadsheet_safe
from tests.conftest import balanced_sample, make_user, started_project

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]
# a pool of 6 cells, all of them queued by round 0
SIX_CELLS = {"budget": 6, "initial_size": 6, "step_size": 6}


def _project(client, headers, i3a_dir, i3a_rows, offset: int, spec: dict, file_name=None) -> int:
    rows = balanced_sample(i3a_rows, per_class=1, offset=offset)
    return started_project(client, headers, i3a_dir, rows, {**SIX_CELLS, **spec}, file_name)


def _next(client, project_id, headers) -> dict:
    response = client.post(f"/api/projects/{project_id}/queue/next", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["cell"]


def _label(client, project_id, headers, image_id, class_name) -> None:
    response = client.post(
        f"/api/projects/{project_id}/labels", headers=headers, json={"image_id": image_id, "class_name": class_name}
    )
    assert response.status_code == 201, response.text


def _stored_map(project_id: int, image_id: int) -> int:
    """A relevance map of the cell under a model of the project, as a round stores one."""
    from backend.core.blobs import get_blob_store
    from backend.core.db.models import ModelVersion, RelevanceMap
    from backend.core.db.session import new_session

    blobs = get_blob_store()
    with new_session() as session:
        model = ModelVersion(project_id=project_id, name="test", checkpoint_key=blobs.put(b"checkpoint"))
        session.add(model)
        session.flush()
        relevance_map = RelevanceMap(
            image_id=image_id,
            model_version_id=model.id,
            method="deeptaylor",
            png_key=blobs.put(b"png " + uuid.uuid4().bytes),
            npy_key=blobs.put(b"npy " + uuid.uuid4().bytes),
        )
        session.add(relevance_map)
        session.commit()
        return relevance_map.id


def test_a_blind_annotator_sees_no_details_nor_maps_of_a_cell_before_labeling_it(
    app_client, admin_headers, i3a_dir, i3a_rows
):
    spec = {"classes": [{"name": c} for c in CLASSES], "reveal_after_label": True}
    project_id = _project(app_client, admin_headers, i3a_dir, i3a_rows, 300, spec)
    _, annotator = make_user("annotator", project_ids=[project_id])
    _, client_user = make_user("client", project_ids=[project_id])
    selections_url = f"/api/projects/{project_id}/rounds/0/selections"
    details = {s["image_id"]: s["details"] for s in app_client.get(selections_url, headers=admin_headers).json()}
    assert len(details) == 6 and all(d["strategy"] == "random" for d in details.values())
    assert {s["image_id"]: s["details"] for s in app_client.get(selections_url, headers=client_user).json()} == details
    assert all(s["details"] == {} for s in app_client.get(selections_url, headers=annotator).json())

    cell = _next(app_client, project_id, annotator)
    map_id = _stored_map(project_id, cell["image_id"])
    maps_url = f"/api/projects/{project_id}/images/{cell['image_id']}/maps"
    for url in (maps_url, f"{maps_url}/{map_id}.png", f"{maps_url}/{map_id}.npy"):
        refused = app_client.get(url, headers=annotator)
        assert refused.status_code == 403 and "hidden until it is labeled" in refused.json()["detail"], url
        assert app_client.get(url, headers=admin_headers).status_code == 200, url

    _label(app_client, project_id, annotator, cell["image_id"], "Golgi")
    seen = {s["image_id"]: s["details"] for s in app_client.get(selections_url, headers=annotator).json()}
    assert seen == {image_id: d if image_id == cell["image_id"] else {} for image_id, d in details.items()}
    queue = app_client.get(f"/api/projects/{project_id}/queue", headers=annotator).json()
    assert {e["image_id"]: e["details"] for e in queue} == seen
    maps = app_client.get(maps_url, headers=annotator)
    assert maps.status_code == 200 and [m["png_url"] for m in maps.json()] == [f"{maps_url}/{map_id}.png"]
    assert app_client.get(f"{maps_url}/{map_id}.png", headers=annotator).status_code == 200


def test_the_queue_gives_the_label_of_every_labeled_cell(app_client, admin_headers, i3a_dir, i3a_rows):
    project_id = _project(app_client, admin_headers, i3a_dir, i3a_rows, 310, {"classes": [{"name": c} for c in CLASSES]})
    _, annotator = make_user("annotator", project_ids=[project_id])
    labeled = {}
    for class_name in ("Speckled", "NuMem"):
        cell = _next(app_client, project_id, annotator)
        _label(app_client, project_id, annotator, cell["image_id"], class_name)
        labeled[cell["image_id"]] = class_name
    for headers in (annotator, admin_headers):
        queue = app_client.get(f"/api/projects/{project_id}/queue", headers=headers).json()
        assert len(queue) == 6
        assert {e["image_id"]: e["label"] for e in queue if e["status"] == "labeled"} == labeled
        assert all(e["label"] is None for e in queue if e["status"] != "labeled")


def _in_two_plates(index: int, _row: dict) -> str:
    """plate0/000.png, plate1/000.png, plate0/001.png, ...: every file name twice."""
    return f"plate{index % 2}/{index // 2:03d}.png"


def test_the_export_keeps_each_files_imported_path(app_client, admin_headers, i3a_dir, i3a_rows):
    project_id = _project(
        app_client, admin_headers, i3a_dir, i3a_rows, 320, {"classes": [{"name": c} for c in CLASSES]}, _in_two_plates
    )
    _, annotator = make_user("annotator", project_ids=[project_id])
    for _ in range(4):
        _label(app_client, project_id, annotator, _next(app_client, project_id, annotator)["image_id"], "Golgi")
    images = app_client.get(f"/api/projects/{project_id}/images", headers=admin_headers).json()["items"]
    path_of = {image["content_hash"]: image["meta"]["path"] for image in images}
    assert sorted(path_of.values()) == sorted(_in_two_plates(i, {}) for i in range(6))

    export_url = f"/api/projects/{project_id}/labels/export"
    rows = list(csv.DictReader(io.StringIO(app_client.get(export_url, headers=admin_headers).text)))
    assert len(rows) == 4 and all(row["path"] == path_of[row["content_hash"]] for row in rows)
    assert all(row["filename"] == row["path"].split("/")[1] for row in rows)
    as_json = app_client.get(export_url, params={"format": "json"}, headers=admin_headers).json()
    assert [row["path"] for row in as_json] == [row["path"] for row in rows]
    # a class folder in a path would tell annotators the reference class
    mine = app_client.get(export_url, params={"format": "json"}, headers=annotator).json()
    assert len(mine) == 4 and all(row["path"] is None for row in mine)


FORMULAS = ["=cmd|'calc'!A1", "+Speckled", "-Golgi", "@SUM(A1)"]


def test_the_csv_export_quotes_what_a_spreadsheet_would_run_and_json_stays_exact(
    app_client, admin_headers, i3a_dir, i3a_rows
):
    classes = [*FORMULAS, "Homogeneous", "NuMem"]
    files = ["=1+1.png", "+2.png", "-3.png", "@4.png", "5.png", "6.png"]
    project_id = _project(
        app_client,
        admin_headers,
        i3a_dir,
        i3a_rows,
        330,
        {"classes": [{"name": c} for c in classes]},
        lambda index, _row: files[index],
    )
    username = f"=HYPERLINK(x)-{uuid.uuid4().hex[:6]}"
    _, annotator = make_user("annotator", username, project_ids=[project_id])
    for class_name in FORMULAS:
        _label(app_client, project_id, annotator, _next(app_client, project_id, annotator)["image_id"], class_name)

    export_url = f"/api/projects/{project_id}/labels/export"
    exact = app_client.get(export_url, params={"format": "json"}, headers=admin_headers).json()
    assert sorted(row["class_name"] for row in exact) == sorted(FORMULAS)
    assert {row["username"] for row in exact} == {username} and all(row["filename"] in files for row in exact)
    written = list(csv.DictReader(io.StringIO(app_client.get(export_url, headers=admin_headers).text)))
    assert len(written) == 4
    for row, original in zip(written, exact):
        for field in ("filename", "path", "class_name", "username"):
            value = original[field]
            assert row[field] == ("'" + value if value[0] in "=+-@" else value), (field, row[field])
        assert row["content_hash"] == original["content_hash"] and row["created_at"] == original["created_at"]


@pytest.mark.parametrize("value", ["=1", "+1", "-1", "@x", "\tx", "\rx"])
def test_a_text_a_spreadsheet_would_run_gets_a_leading_quote(value):
    assert spreadsheet_safe(value) == "'" + value


@pytest.mark.parametrize("value", ["x=1", "1-2", "", 7, None])
def test_other_values_are_written_as_they_are(value):
    assert spreadsheet_safe(value) == value
