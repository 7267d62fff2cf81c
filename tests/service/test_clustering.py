"""Deep clustering of the pool over HTTP with a real worker, and a cold start spread
evenly over the clusters."""

import io
import zipfile

import pytest

from backend.testing import wait_for, wait_for_round
from tests.conftest import balanced_sample

pytestmark = pytest.mark.slow

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


def _upload_pool_with_classes(client, headers, project_id, rows, i3a_dir):
    """A zip with a folder per class: the pool's cells get reference classes (for the scores)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for row in rows:
            archive.writestr(f"{row['pattern']}/{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes())
    response = client.post(
        f"/api/projects/{project_id}/images",
        headers=headers,
        files=[("files", ("pool.zip", buffer.getvalue(), "application/zip"))],
        data={"split": "pool"},
    )
    assert response.status_code == 201, response.text
    return response.json()["image_ids"]


def test_a_clustered_pool_gives_a_cold_start_spread_over_its_clusters(app_client, admin_headers, worker, i3a_dir, i3a_rows):
    client = app_client
    response = client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": "clustering-e2e",
            "classes": [{"name": c} for c in CLASSES],
            "strategy": "entropy",
            "budget": 18,
            "initial_size": 6,
            "step_size": 6,
            "cold_start": "clusters",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["cold_start"] == "clusters"
    project_id = response.json()["id"]
    url = f"/api/projects/{project_id}/clustering"
    pool_ids = _upload_pool_with_classes(client, admin_headers, project_id, balanced_sample(i3a_rows, per_class=6), i3a_dir)
    assert len(pool_ids) == 36

    assert client.get(url, headers=admin_headers).json() == {"clustering": None, "clusters": [], "points": []}
    for bad in (
        {"case": 4},
        {"n_clusters": 1},
        {"pretrain_epochs": -1},
        {"pretext_epochs": 0},
        {"representation": "pixels"},
        {"unknown": 1},
    ):
        assert client.post(url, headers=admin_headers, json=bad).status_code == 422, bad
    assert client.get(url, headers=admin_headers).json()["clustering"] is None  # nothing stored

    response = client.post(
        url,
        headers=admin_headers,
        json={"representation": "autoencoder", "case": 1, "pretrain_epochs": 1, "cluster_epochs": 1},
    )
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued" and response.json()["config"]["n_clusters"] == 6
    # the worker needs seconds for even one epoch, so the first request is still queued or running
    assert client.post(url, headers=admin_headers, json={}).status_code == 409

    def finished():
        overview = client.get(url, headers=admin_headers).json()
        return overview if overview["clustering"]["state"] in ("done", "failed") else None

    overview = wait_for(finished, timeout=240, interval=1, message="the pool clustering")
    clustering = overview["clustering"]
    assert clustering["state"] == "done", clustering["error"]
    assert sorted(p["image_id"] for p in overview["points"]) == sorted(pool_ids)  # every pool cell once
    assert all(0 <= p["cluster"] < 6 and isinstance(p["x"], float) and isinstance(p["y"], float) for p in overview["points"])
    assert {p["label"] for p in overview["points"]} == set(CLASSES)  # admins see the reference classes
    assert sum(c["size"] for c in overview["clusters"]) == 36 == sum(clustering["metrics"]["sizes"])
    assert all(0 < len(c["example_image_ids"]) <= min(8, c["size"]) for c in overview["clusters"])
    assert 0 <= clustering["metrics"]["acc"] <= 1 and "nmi" in clustering["metrics"]
    assert clustering["metrics"]["recon_mse"] > 0

    assert client.post(f"/api/projects/{project_id}/start", headers=admin_headers).status_code == 202

    round_ = wait_for_round(client, admin_headers, project_id, 0, timeout=120)
    assert round_["selection_summary"]["cold_start"] == "clusters"
    selections = client.get(f"/api/projects/{project_id}/rounds/0/selections", headers=admin_headers).json()
    assert len(selections) == 9 and [s["reserve"] for s in selections] == [False] * 6 + [True] * 3  # k + a half-step reserve
    selections = selections[:6]
    cluster_of = {p["image_id"]: p["cluster"] for p in overview["points"]}
    picked_clusters = [cluster_of[s["image_id"]] for s in selections]
    assert len(set(picked_clusters)) == min(6, len(overview["clusters"]))
    assert all(s["details"]["strategy"] == "cluster-spread" for s in selections)
    assert [s["details"]["cluster"] for s in selections] == picked_clusters


def test_a_cluster_cold_start_without_a_clustering_falls_back_to_random(
    app_client, admin_headers, worker, i3a_dir, i3a_rows
):
    client = app_client
    response = client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": "clustering-fallback",
            "classes": [{"name": c} for c in CLASSES],
            "budget": 12,
            "initial_size": 6,
            "step_size": 6,
            "cold_start": "clusters",
        },
    )
    project_id = response.json()["id"]
    _upload_pool_with_classes(client, admin_headers, project_id, balanced_sample(i3a_rows, per_class=2, offset=6), i3a_dir)
    assert client.post(f"/api/projects/{project_id}/start", headers=admin_headers).status_code == 202

    round_ = wait_for_round(client, admin_headers, project_id, 0, timeout=120)
    assert round_["selection_summary"]["cold_start"] == "random (no finished clustering)"
    selections = client.get(f"/api/projects/{project_id}/rounds/0/selections", headers=admin_headers).json()
    # k and no reserve: the budget (k + m) leaves no room for reserve labels beyond the next step
    assert len(selections) == 6 and all(s["details"]["strategy"] == "random" for s in selections)


def test_round_0_waits_for_the_pool_pretraining_and_coverage_picks_from_its_features(
    app_client, admin_headers, worker, i3a_dir, i3a_rows
):
    client = app_client
    response = client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": "contrastive-start",
            "classes": [{"name": c} for c in CLASSES],
            "strategy": "coverage-entropy",
            "budget": 12,
            "initial_size": 6,
            "step_size": 6,
            "model_settings": {"pool_pretraining_epochs": 1},  # the server default here is 0 (conftest)
        },
    )
    project_id = response.json()["id"]
    url = f"/api/projects/{project_id}/clustering"
    _upload_pool_with_classes(client, admin_headers, project_id, balanced_sample(i3a_rows, per_class=6, offset=12), i3a_dir)
    started = client.post(f"/api/projects/{project_id}/start", headers=admin_headers)
    assert started.status_code == 202 and started.json()["state"] in ("waiting", "queued", "running", "done")
    pretraining = client.get(url, headers=admin_headers).json()["clustering"]
    assert pretraining["config"]["representation"] == "contrastive" and pretraining["config"]["pretext_epochs"] == 1

    round_ = wait_for_round(client, admin_headers, project_id, 0, timeout=240)
    clustering = client.get(url, headers=admin_headers).json()["clustering"]
    assert clustering["state"] == "done", clustering["error"]
    metrics = clustering["metrics"]
    assert metrics["pretext_loss"] > 0 and metrics["start_model"] is True and sum(metrics["sizes"]) == 36
    project = client.get(f"/api/projects/{project_id}", headers=admin_headers).json()
    assert project["start_model_id"] == metrics["model_version_id"]
    assert round_["selection_summary"]["phase"] == "coverage"  # round 0 read the pretrained network's features
    selections = client.get(f"/api/projects/{project_id}/rounds/0/selections", headers=admin_headers).json()
    first = [s for s in selections if not s["reserve"]]
    assert len(first) == 6 and all(s["details"]["strategy"] == "coverage-entropy" for s in first)
    assert all("probabilities" not in s["details"] for s in first)  # no trained model has judged them yet
