"""The whole budget loop on real parts: PostgreSQL, Redis, a Celery worker process,
real I3A cells, real training. The ground truth plays the annotator."""

import csv
import io

import numpy as np
import pytest

from backend.testing import wait_for_round
from tests.conftest import balanced_sample, make_user

pytestmark = pytest.mark.slow

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]
BUDGET, INITIAL, STEP = 60, 20, 20


def _upload(client, headers, project_id, rows, i3a_dir, split):
    files = [
        ("files", (f"{row['pattern']}-{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes(), "image/png"))
        for row in rows
    ]
    if split == "test":  # the test split needs its classes: folder-per-class in a zip
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for row in rows:
                archive.writestr(f"{row['pattern']}/{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes())
        files = [("files", ("test.zip", buffer.getvalue(), "application/zip"))]
    response = client.post(f"/api/projects/{project_id}/images", headers=headers, files=files, data={"split": split})
    assert response.status_code == 201, response.text
    return response.json()


def test_budget_loop_runs_rounds_until_the_budget_is_spent(app_client, admin_headers, worker, i3a_dir, i3a_rows):
    client = app_client
    pool_rows = balanced_sample(i3a_rows, per_class=50)
    test_rows = balanced_sample(i3a_rows, per_class=10, offset=50)
    truth = {f"{row['pattern']}-{row['image_id']}.png": row["pattern"] for row in pool_rows}

    response = client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": "loop-e2e",
            "classes": [{"name": c} for c in CLASSES],
            "strategy": "entropy",
            "budget": BUDGET,
            "initial_size": INITIAL,
            "step_size": STEP,
            "model_settings": {"max_epochs": 3, "patience": 2, "batch_size": 32},
        },
    )
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    assert [c["key"] for c in response.json()["classes"]] == ["1", "2", "3", "4", "5", "6"]
    assert len(_upload(client, admin_headers, project_id, pool_rows, i3a_dir, "pool")["image_ids"]) == 300
    assert len(_upload(client, admin_headers, project_id, test_rows, i3a_dir, "test")["image_ids"]) == 60

    assert client.post(f"/api/projects/{project_id}/start", headers=admin_headers).status_code == 202
    _, annotator = make_user("annotator", project_ids=[project_id])

    for number in range(BUDGET // STEP + 1):
        round_ = wait_for_round(client, admin_headers, project_id, number)
        expected = INITIAL if number == 0 else (STEP if number < BUDGET // STEP else 0)
        assert round_["n_selected"] == expected
        for _ in range(expected):
            cell = client.post(f"/api/projects/{project_id}/queue/next", headers=annotator).json()["cell"]
            assert cell is not None
            label = client.post(
                f"/api/projects/{project_id}/labels",
                headers=annotator,
                json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]]},
            )
            assert label.status_code == 201, label.text

    rounds = client.get(f"/api/projects/{project_id}/rounds", headers=admin_headers).json()
    assert [r["number"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["state"] == "done" and r["attempts"] == 1 for r in rounds)
    assert rounds[0]["model_version_id"] is None  # round 0 only picks the first k cells
    assert [r["n_labels"] for r in rounds] == [0, 20, 40, 60]
    for r in rounds[1:]:
        metrics = r["metrics"]
        assert 0 <= metrics["mca"] <= 1 and 0 <= metrics["aca"] <= 1
        assert sum(map(sum, metrics["confusion"])) == 60
        assert r["model_version_id"] is not None and r["timings"]["train_s"] > 0
    assert rounds[-1]["metrics"]["aca"] > 1 / 6  # 60 real labels beat chance on the test split
    for r in rounds[1:3]:  # model-picked batches, once labeled, are checked against the model's mistakes
        assert r["diagnostics"]["n"] == STEP and 0 <= r["diagnostics"]["hit_rate"] <= 1
        assert 0 < r["selection_summary"]["pool_expected_error"] < 1
        assert r["diagnostics"]["pool_expected_error"] == r["selection_summary"]["pool_expected_error"]

    models = client.get(f"/api/models?project_id={project_id}", headers=admin_headers).json()
    assert [m["id"] for m in models] == [r["model_version_id"] for r in rounds[1:]]
    assert [m["parent_id"] for m in models] == [None, models[0]["id"], models[1]["id"]]

    selections = client.get(f"/api/projects/{project_id}/rounds/1/selections", headers=admin_headers).json()
    scores = [s["score"] for s in selections]
    step = [s for s in selections if not s["reserve"]]
    assert scores == sorted(scores, reverse=True) and len(step) == STEP and all(s["status"] == "labeled" for s in step)
    assert [s["rank"] for s in selections if s["reserve"]] == list(range(STEP, len(selections)))
    assert len(selections[0]["details"]["probabilities"]) == 6

    picked = selections[0]["image_id"]  # each queued cell has its DeepTaylor and LRP maps under the round's model
    maps = client.get(f"/api/projects/{project_id}/images/{picked}/maps", headers=admin_headers).json()
    assert {m["method"] for m in maps} == {"deeptaylor", "lrp-epsilon"}
    assert {m["model_version_id"] for m in maps} == {rounds[1]["model_version_id"]}
    png = client.get(maps[0]["png_url"], headers=admin_headers)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    raw = np.load(io.BytesIO(client.get(maps[0]["npy_url"], headers=admin_headers).content))
    assert raw.shape == (2, 56, 56) and raw.dtype == np.float32

    progress = client.get(f"/api/projects/{project_id}/progress", headers=admin_headers).json()
    assert progress["state"] == "finished" and progress["labeled"] == BUDGET == progress["budget"]
    assert sum(progress["labels_per_class"].values()) == BUDGET
    assert progress["rounds"][-1]["aca"] == rounds[-1]["metrics"]["aca"]

    stop = client.post(f"/api/projects/{project_id}/queue/next", headers=annotator)
    assert stop.status_code == 409 and "budget" in stop.json()["detail"]

    exported = list(
        csv.DictReader(io.StringIO(client.get(f"/api/projects/{project_id}/labels/export", headers=admin_headers).text))
    )
    assert len(exported) == BUDGET
    assert all(row["class_name"] == truth[row["filename"]] for row in exported)


def test_an_explainable_round_shows_why_each_cell_was_picked(app_client, admin_headers, worker, i3a_dir, i3a_rows):
    client = app_client
    pool_rows = balanced_sample(i3a_rows, per_class=10, offset=300)
    test_rows = balanced_sample(i3a_rows, per_class=5, offset=320)
    truth = {f"{row['pattern']}-{row['image_id']}.png": row["pattern"] for row in pool_rows}
    response = client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": "xal-e2e",
            "classes": [{"name": c} for c in CLASSES],
            "budget": 21,
            "initial_size": 12,
            "step_size": 9,
            "strategy": "xal-margin",
            "strategy_options": {"representation": "concept", "centres": "classes"},
            "model_settings": {"max_epochs": 2, "patience": 2, "batch_size": 32},
        },
    )
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    _upload(client, admin_headers, project_id, pool_rows, i3a_dir, "pool")
    _upload(client, admin_headers, project_id, test_rows, i3a_dir, "test")
    assert client.post(f"/api/projects/{project_id}/start", headers=admin_headers).status_code == 202
    _, annotator = make_user("annotator", project_ids=[project_id])
    labeled_in_round_0 = set()
    for number, size in ((0, 12), (1, 9)):
        assert wait_for_round(client, admin_headers, project_id, number)["n_selected"] == size
        for _ in range(size):
            cell = client.post(f"/api/projects/{project_id}/queue/next", headers=annotator).json()["cell"]
            if number == 1:
                why = cell["details"]
                assert why["strategy"] == "xal-margin" and why["representation"] == "concept"
                # one distance per class present among the 12 labeled cells
                assert 2 <= len(why["distances"]) <= 6 and len(why["top_channels"]) > 0
                for nearest in why["nearest"]:  # the medoid cells to compare with, under their own labels
                    assert nearest["class_name"] in CLASSES and nearest["class_name"] == truth_of(
                        client, admin_headers, project_id, nearest["image_id"]
                    )
                    medoid_maps = client.get(
                        f"/api/projects/{project_id}/images/{nearest['image_id']}/maps", headers=annotator
                    )
                    assert {m["method"] for m in medoid_maps.json()} == {"deeptaylor", "lrp-epsilon"}
            assert (
                client.post(
                    f"/api/projects/{project_id}/labels",
                    headers=annotator,
                    json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]]},
                ).status_code
                == 201
            )
            if number == 0:
                labeled_in_round_0.add(cell["filename"])
    final = wait_for_round(client, admin_headers, project_id, 2)
    assert final["n_selected"] == 0 and final["n_labels"] == 21
    first = client.get(f"/api/projects/{project_id}/rounds/1", headers=admin_headers).json()
    summary = first["selection_summary"]
    labeled_classes = {truth[name] for name in truth if name in labeled_in_round_0}
    assert summary["centres"] == "classes" and len(summary["centre_medoids"]) == len(labeled_classes)
    assert {m["class_name"] for m in summary["centre_medoids"]} == labeled_classes
    assert summary["degenerate"] in (True, False) and "pool_expected_error" in summary
    assert first["diagnostics"]["n"] == 9


def truth_of(client, headers, project_id, image_id):
    """A medoid is a labeled cell: its label is what the annotator gave it."""
    return client.get(f"/api/projects/{project_id}/images/{image_id}", headers=headers).json()["label"]
