"""A pool clustering whose encoding is split into chunks for two real Celery worker processes
stores the clusters, coordinates and metrics of one pass over the whole pool."""

import numpy as np
import pytest
from sqlalchemy import select

from backend.testing import wait_for
from tests.conftest import balanced_sample
from tests.service.chunk_workers import private_queue, two_chunking_workers  # noqa: F401 - fixtures
from tests.service.test_clustering import CLASSES, _upload_pool_with_classes

pytestmark = pytest.mark.slow

CHUNK_SIZE = 128  # 6 x 45 pool cells -> chunks of 128, 128 and 14 (on the encoding batch, 128)


@pytest.fixture
def scoring_chunk_size():
    return CHUNK_SIZE


def test_a_pool_encoded_in_chunks_on_two_workers_is_clustered_as_in_one_pass(
    app_client, admin_headers, two_chunking_workers, i3a_dir, i3a_rows
):
    import torch
    from threadpoolctl import threadpool_limits

    from backend.core.db.models import Image, ImageCluster, PoolClustering, Project
    from backend.core.db.session import new_session
    from worker.clustering import compute_clustering, encode_chunk
    from worker.jobs import job_folder
    from worker.rounds import load_cells

    client = app_client
    project_id = client.post(
        "/api/projects",
        headers=admin_headers,
        json={"name": "chunked-clustering", "classes": [{"name": c} for c in CLASSES]},
    ).json()["id"]
    _upload_pool_with_classes(client, admin_headers, project_id, balanced_sample(i3a_rows, per_class=45, offset=60), i3a_dir)
    url = f"/api/projects/{project_id}/clustering"
    response = client.post(
        url,
        headers=admin_headers,
        json={"representation": "autoencoder", "case": 1, "pretrain_epochs": 1, "cluster_epochs": 1, "max_cells": 48},
    )
    assert response.status_code == 202, response.text

    def finished():
        clustering = client.get(url, headers=admin_headers).json()["clustering"]
        return clustering if clustering["state"] in ("done", "failed") else None

    clustering = wait_for(finished, timeout=240, interval=1, message="the clustering in chunks")
    assert clustering["state"] == "done", clustering["error"]
    chunked = clustering["metrics"]
    assert chunked["chunks"]["n"] == 3 and chunked["n_cells"] == 270 and chunked["n_trained"] == 48

    # The reference: the same pool and config in one pass here, in the workers' arithmetic (one thread).
    with new_session() as session:
        row = session.get(PoolClustering, clustering["id"])
        config, attempt = dict(row.config), row.attempts
        project = session.get(Project, project_id)
        positions = {cls.id: cls.position for cls in project.classes}
        pool = session.execute(
            select(Image.id, Image.content_hash, Image.reference_class_id)
            .where(Image.project_id == project_id, Image.split == "pool")
            .order_by(Image.id)
        ).all()
        stored = session.execute(
            select(ImageCluster.image_id, ImageCluster.cluster, ImageCluster.x, ImageCluster.y)
            .where(ImageCluster.clustering_id == row.id)
            .order_by(ImageCluster.image_id)
        ).all()
        channel = project.channel
    reference = np.array([positions.get(c, -1) if c is not None else -1 for _, _, c in pool], dtype=np.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            one_pass = compute_clustering(config, load_cells([h for _, h, _ in pool], channel), reference)
    finally:
        torch.set_num_threads(threads)

    assert [image_id for image_id, _, _, _ in stored] == [image_id for image_id, _, _ in pool]
    assert np.array_equal([cluster for _, cluster, _, _ in stored], one_pass["clusters"])
    assert np.array_equal([(x, y) for _, _, x, y in stored], one_pass["coordinates"].astype(np.float64))
    expected = {name: value for name, value in one_pass["metrics"].items() if name != "seconds"}
    assert {name: value for name, value in chunked.items() if name not in ("seconds", "chunks")} == expected

    # A chunk delivered again after the clustering was stored changes nothing, and the job's files are gone.
    assert encode_chunk(clustering["id"], attempt, 0) == "dropped"
    assert client.get(url, headers=admin_headers).json()["clustering"]["metrics"] == chunked
    assert not job_folder(PoolClustering, clustering["id"], attempt).parent.exists()
