"""A deep clustering of a project's pool, as a worker runs it: claim the row, train the
autoencoder and its clustering layer (worker.ml.deep_clustering) on up to `max_cells`
pool cells, assign every pool cell to its nearest centroid, and store each cell's cluster
and the 2-D PCA of its latent. Like a round, a clustering is taken only while queued and its
lease held while it is computed (worker.jobs)."""
import logging

import numpy as np
from sqlalchemy import delete, select

from backend.db.models import Image, ImageCluster, PoolClustering, Project, utcnow
from backend.db.session import new_session
from backend.settings import get_settings
from worker.jobs import claim, holding_lease, mark_failed, set_progress
from worker.rounds import load_cells

log = logging.getLogger(__name__)


def compute_clustering(config: dict, cells: np.ndarray, reference: np.ndarray, report=lambda **progress: None) -> dict:
    """The heavy part, no database: (clusters (N,), coordinates (N, 2), metrics).
    `reference` holds each cell's reference class position, -1 where unknown."""
    import torch

    from worker.ml.cluster_metrics import clustering_scores, pca_2d
    from worker.ml.deep_clustering import (DeepClusteringAutoencoder, DeepClusteringConfig, encode, standardise_cells,
                                           train_deep_clustering)
    from worker.ml.training import resolve_device

    device = resolve_device(get_settings().device)
    if config.get("standardise"):
        cells = standardise_cells(cells)
    seed = config.get("seed", 0)
    rng = np.random.default_rng(seed)
    n_train = min(len(cells), config["max_cells"])
    train_index = np.sort(rng.choice(len(cells), n_train, replace=False))
    torch.manual_seed(seed)
    model = DeepClusteringAutoencoder(config["case"])
    training = DeepClusteringConfig(pretrain_epochs=config["pretrain_epochs"], cluster_epochs=config["cluster_epochs"], seed=seed)
    total = training.pretrain_epochs + training.cluster_epochs
    report(phase="training", epoch=0, epochs=total)
    trained = train_deep_clustering(
        model, cells[train_index], config["n_clusters"], training, device,
        progress=lambda epoch, epochs: report(phase="training", epoch=epoch, epochs=epochs),
    )
    report(phase="assigning", epoch=total, epochs=total)
    latent = trained.latent if n_train == len(cells) else encode(model, cells, device, training.batch_size)
    distances = ((latent[:, None, :] - trained.centroids[None, :, :]) ** 2).sum(-1)
    clusters = distances.argmin(1)
    coordinates, explained = pca_2d(latent)
    metrics = {
        "sizes": np.bincount(clusters, minlength=config["n_clusters"]).tolist(),
        "recon_mse": float(trained.recon_mse),
        "pretrained_recon_mse": float(trained.pretrained_recon_mse),
        "n_cells": len(cells), "n_trained": n_train,
        "pca_explained_variance": [float(v) for v in explained],
        "seconds": trained.seconds,
    }
    known = reference >= 0
    if known.any():
        metrics.update(clustering_scores(reference[known], clusters[known]))
        metrics["n_reference"] = int(known.sum())
    return {"clusters": clusters, "coordinates": coordinates, "metrics": metrics}


def run_clustering(clustering_id: int) -> str:
    with new_session() as session:
        clustering = claim(session, PoolClustering, clustering_id)
        if clustering is None:
            return "skipped"
        project = session.get(Project, clustering.project_id)
        positions = {cls.id: cls.position for cls in project.classes}
        channel, config = project.channel, dict(clustering.config)
        pool = session.execute(
            select(Image.id, Image.content_hash, Image.reference_class_id)
            .where(Image.project_id == project.id, Image.split == "pool").order_by(Image.id)
        ).all()
    with holding_lease(PoolClustering, clustering_id, clustering.attempts):
        try:
            cells = load_cells([h for _, h, _ in pool], channel)
            reference = np.array([positions.get(c, -1) if c is not None else -1 for _, _, c in pool], dtype=np.int64)
            result = compute_clustering(config, cells, reference, lambda **progress: set_progress(PoolClustering, clustering_id, **progress))
        except Exception as error:
            log.exception("clustering %s failed", clustering_id)
            mark_failed(PoolClustering, clustering_id, error)
            return "failed"
        with new_session() as session:
            clustering = session.scalar(select(PoolClustering).where(PoolClustering.id == clustering_id).with_for_update())
            if clustering.state != "running":
                return "skipped"
            session.execute(delete(ImageCluster).where(ImageCluster.clustering_id == clustering_id))
            session.add_all(
                ImageCluster(clustering_id=clustering_id, image_id=image_id, cluster=int(cluster), x=float(x), y=float(y))
                for (image_id, _, _), cluster, (x, y) in zip(pool, result["clusters"], result["coordinates"])
            )
            clustering.metrics = result["metrics"]
            clustering.progress = {"phase": "done"}
            clustering.state, clustering.finished_at = "done", utcnow()
            session.commit()
    return "done"
