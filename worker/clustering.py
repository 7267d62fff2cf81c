"""A deep clustering of a project's pool, as a worker runs it: claim the row, train the
autoencoder and its clustering layer (worker.ml.deep_clustering) on up to `max_cells`
pool cells, assign every pool cell to its nearest centroid, and store each cell's cluster
and the 2-D PCA of its latent. Like a round, a clustering is taken only while queued and its
lease held while it is computed (worker.jobs).

A pool larger than both `XAL_SCORING_CHUNK_SIZE` and `max_cells` is encoded in chunks by every
worker on the queue (issue #6): the clustering task trains on its sample only, writes the model
to the job's folder and maps the encoding over chunks of the pool (worker.jobs.map_chunks: one
`xal.encode_chunk` task per chunk, the clustering task computing chunks too), then concatenates
the latents in pool order, assigns the clusters and stores the clustering as one pass does.
Chunks are cut on the encoding batches, so the latents, and with them the clusters,
coordinates and metrics, are those of one pass, bit for bit. A pool the trainer sees whole
(no larger than `max_cells`) has every latent already and is never chunked."""

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select

from backend.core.blobs import get_blob_store
from backend.core.db.models import Image, ImageCluster, ModelVersion, PoolClustering, Project, Round, utcnow
from backend.core.db.session import new_session
from backend.core.jobs import JobState, Task
from backend.core.outbox import enqueue
from backend.core.queries import release_waiting_rounds
from backend.core.settings import get_settings
from worker.jobs import (
    chunk_file,
    chunks_summary,
    claim,
    compute_chunk,
    holding_lease,
    job_folder,
    map_chunks,
    mark_failed,
    remove_job_folders,
    set_progress,
    write_atomically,
)
from worker.rounds import load_cells

log = logging.getLogger(__name__)

ASSIGN_BLOCK = 4096  # cells whose distances to the centroids are computed at once


def training_sample(n_cells: int, config: dict) -> np.ndarray:
    """The pool indices trained on: `max_cells` of them, drawn with the clustering's seed."""
    rng = np.random.default_rng(config.get("seed", 0))
    return np.sort(rng.choice(n_cells, min(n_cells, config["max_cells"]), replace=False))


def representation(config: dict) -> str:
    return config.get("representation", "autoencoder")  # clusterings stored before there was a choice


def train_clustering(config: dict, cells: np.ndarray, report=lambda **progress: None) -> tuple:
    """(model, latent of `cells`, centroids, training metrics) trained on `cells`: the
    contrastively pretrained network and k-means of its features, or the thesis's autoencoder
    with its clustering layer."""
    import torch

    from worker.ml.training import bf16_is_fast, resolve_device

    device = resolve_device(get_settings().device)
    torch.manual_seed(config.get("seed", 0))
    if representation(config) == "contrastive":
        from sklearn.cluster import KMeans

        from worker.ml.pretext import PretextConfig, pretrain_contrastive

        report(phase="training", epoch=0, epochs=config["pretext_epochs"])
        pretrained = pretrain_contrastive(
            cells,
            PretextConfig(epochs=config["pretext_epochs"], seed=config.get("seed", 0), bf16=bf16_is_fast(device)),
            device,
            n_classes=max(2, config["n_clusters"]),
            progress=lambda epoch, epochs, _loss: report(phase="training", epoch=epoch, epochs=epochs),
        )
        latent = encode_cells(config, pretrained.model, cells)
        kmeans = KMeans(config["n_clusters"], n_init=10, random_state=config.get("seed", 0)).fit(latent)
        metrics = {"pretext_loss": pretrained.history[-1]["loss"], "n_trained": len(cells), "seconds": pretrained.seconds}
        return pretrained.model, latent, kmeans.cluster_centers_, metrics

    from worker.ml.deep_clustering import DeepClusteringAutoencoder, train_deep_clustering

    if config.get("standardise"):
        from worker.ml.deep_clustering import standardise_cells

        cells = standardise_cells(cells)
    model = DeepClusteringAutoencoder(config["case"])
    training = _training_config(config)
    report(phase="training", epoch=0, epochs=training.pretrain_epochs + training.cluster_epochs)
    trained = train_deep_clustering(
        model,
        cells,
        config["n_clusters"],
        training,
        device,
        progress=lambda epoch, epochs: report(phase="training", epoch=epoch, epochs=epochs),
    )
    metrics = {
        "recon_mse": float(trained.recon_mse),
        "pretrained_recon_mse": float(trained.pretrained_recon_mse),
        "n_trained": len(cells),
        "seconds": trained.seconds,
    }
    return model, trained.latent, trained.centroids, metrics


def encode_cells(config: dict, model, cells: np.ndarray) -> np.ndarray:
    """The latent of pool cells: the pretrained network's features, L2-normalised (contrastive),
    or the autoencoder's (N, 512), in batches of its training's batch size."""
    from worker.ml.training import resolve_device

    device = resolve_device(get_settings().device)
    if representation(config) == "contrastive":
        from worker.ml.pretext import embed_cells

        features = embed_cells(model, cells, device).astype(np.float64)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    from worker.ml.deep_clustering import encode, standardise_cells

    if config.get("standardise"):
        cells = standardise_cells(cells)
    return encode(model, cells, device, _training_config(config).batch_size)


def model_bytes(config: dict, model) -> bytes:
    """The trained model as bytes (a checkpoint a project can start from, for contrastive)."""
    import torch

    if representation(config) == "contrastive":
        from worker.ml.training import save_checkpoint

        return save_checkpoint(model)
    weights = io.BytesIO()
    torch.save({name: value.cpu() for name, value in model.state_dict().items()}, weights)
    return weights.getvalue()


def model_from_bytes(config: dict, data: bytes):
    import torch

    if representation(config) == "contrastive":
        from worker.ml.training import load_checkpoint

        return load_checkpoint(data)
    from worker.ml.deep_clustering import DeepClusteringAutoencoder

    model = DeepClusteringAutoencoder(config["case"])
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu"))
    return model


def assign_clusters(config: dict, latent: np.ndarray, centroids: np.ndarray, training: dict, reference: np.ndarray) -> dict:
    """The clustering of the pool from every cell's latent: (clusters (N,), coordinates (N, 2),
    metrics). `training` is train_clustering's metrics; `reference` holds each cell's reference
    class position, -1 where unknown."""
    from worker.ml.cluster_metrics import clustering_scores, pca_2d

    clusters = np.concatenate(
        [
            ((latent[start : start + ASSIGN_BLOCK, None, :] - centroids[None, :, :]) ** 2).sum(-1).argmin(1)
            for start in range(0, len(latent), ASSIGN_BLOCK)
        ]
    )
    coordinates, explained = pca_2d(latent)
    metrics = {
        "sizes": np.bincount(clusters, minlength=config["n_clusters"]).tolist(),
        **training,
        "n_cells": len(latent),
        "pca_explained_variance": [float(v) for v in explained],
    }
    known = reference >= 0
    if known.any():
        metrics.update(clustering_scores(reference[known], clusters[known]))
        metrics["n_reference"] = int(known.sum())
    return {"clusters": clusters, "coordinates": coordinates, "metrics": metrics}


def compute_clustering(config: dict, cells: np.ndarray, reference: np.ndarray, report=lambda **progress: None) -> dict:
    """The whole clustering in one pass, no database: assign_clusters's result, with the
    trained model's bytes under "model"."""
    sample = training_sample(len(cells), config)
    model, latent, centroids, training = train_clustering(config, cells[sample], report)
    report(phase="assigning")
    if len(sample) != len(cells):
        latent = encode_cells(config, model, cells)
    return {**assign_clusters(config, latent, centroids, training, reference), "model": model_bytes(config, model)}


@dataclass
class EncodingJob:
    """What the chunk tasks of one attempt of a clustering need (job.pkl); the trained model is
    beside it (model.pt, model_bytes)."""

    config: dict
    channel: str
    content_hashes: list[str]  # the pool, in order
    chunks: list[tuple[int, int]]  # [start, stop) of each chunk of the pool


def needs_chunks(pool_size: int, config: dict) -> bool:
    return pool_size > get_settings().scoring_chunk_size and pool_size > config["max_cells"]


def run_clustering(clustering_id: int) -> str:
    with new_session() as session:
        clustering = claim(session, PoolClustering, clustering_id)
        if clustering is None:
            return "skipped"
        attempt = clustering.attempts
        project = session.get(Project, clustering.project_id)
        positions = {cls.id: cls.position for cls in project.classes}
        channel, config = project.channel, dict(clustering.config)
        pool = session.execute(
            select(Image.id, Image.content_hash, Image.reference_class_id)
            .where(Image.project_id == project.id, Image.split == "pool")
            .order_by(Image.id)
        ).all()
    image_ids, hashes = [image_id for image_id, _, _ in pool], [h for _, h, _ in pool]
    reference = np.array([positions.get(c, -1) if c is not None else -1 for _, _, c in pool], dtype=np.int64)
    report = lambda **progress: set_progress(PoolClustering, clustering_id, **progress)  # noqa: E731
    with holding_lease(PoolClustering, clustering_id, attempt):
        try:
            if needs_chunks(len(pool), config):  # every worker on the queue helps encode the pool
                result = _cluster_in_chunks(clustering_id, attempt, config, channel, hashes, reference, report)
            else:
                result = compute_clustering(config, load_cells(hashes, channel), reference, report)
        except Exception as error:
            log.exception("clustering %s failed", clustering_id)
            mark_failed(PoolClustering, clustering_id, attempt, error)
            send_waiting_rounds(clustering_id)
            return "failed"
        finally:
            remove_job_folders(PoolClustering, clustering_id, attempt)
        return _store(clustering_id, attempt, image_ids, result)


def _cluster_in_chunks(
    clustering_id: int, attempt: int, config: dict, channel: str, hashes: list[str], reference: np.ndarray, report
) -> dict:
    """compute_clustering with the pool's encoding mapped over chunks (worker.jobs.map_chunks)."""
    sample = training_sample(len(hashes), config)
    model, _, centroids, training = train_clustering(config, load_cells([hashes[i] for i in sample], channel), report)
    folder = job_folder(PoolClustering, clustering_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    model_file = model_bytes(config, model)
    write_atomically(folder / "model.pt", model_file)
    chunks = _pool_chunks(len(hashes), config)
    started = time.perf_counter()
    parts = map_chunks(
        PoolClustering,
        clustering_id,
        attempt,
        EncodingJob(config, channel, hashes, chunks),
        Task.ENCODE_CHUNK,
        lambda job, _folder, index: _latent_chunk(model, job, index),  # with the model this task holds
        phase="encoding",
        pool=len(hashes),
    )
    encode_s = time.perf_counter() - started
    report(phase="assigning")
    latent = np.concatenate([part["latent"] for part in parts])
    result = assign_clusters(config, latent, centroids, training, reference)
    result["metrics"]["chunks"] = {**chunks_summary(chunks, parts), "encode_s": encode_s}
    return {**result, "model": model_file}


def encode_chunk(clustering_id: int, attempt: int, index: int) -> str:
    return compute_chunk(PoolClustering, clustering_id, attempt, index, _encoded_chunk)


def _encoded_chunk(job: EncodingJob, folder: Path, index: int) -> bytes:
    """In a chunk task: the chunk's file, encoded with the model the clustering task wrote."""
    return _latent_chunk(model_from_bytes(job.config, (folder / "model.pt").read_bytes()), job, index)


def _latent_chunk(model, job: EncodingJob, index: int) -> bytes:
    """The chunk's latents as a chunk file."""
    started = time.perf_counter()
    start, stop = job.chunks[index]
    return chunk_file(
        {"latent": encode_cells(job.config, model, load_cells(job.content_hashes[start:stop], job.channel))}, started
    )


def _store(clustering_id: int, attempt: int, image_ids: list[int], result: dict) -> str:
    with new_session() as session:
        clustering = session.scalar(select(PoolClustering).where(PoolClustering.id == clustering_id).with_for_update())
        if clustering.state != JobState.RUNNING or clustering.attempts != attempt:
            log.info("clustering %s was finished or rerun elsewhere; dropping this result", clustering_id)
            return "skipped"
        session.execute(delete(ImageCluster).where(ImageCluster.clustering_id == clustering_id))
        session.add_all(
            ImageCluster(clustering_id=clustering_id, image_id=image_id, cluster=int(cluster), x=float(x), y=float(y))
            for image_id, cluster, (x, y) in zip(image_ids, result["clusters"], result["coordinates"])
        )
        clustering.metrics = result["metrics"]
        if representation(clustering.config) == "contrastive" and clustering.config.get("start_model"):
            _offer_start_model(session, clustering, result["model"])
        clustering.progress = {"phase": "done"}
        clustering.state, clustering.finished_at = JobState.DONE, utcnow()
        session.commit()
    send_waiting_rounds(clustering_id)
    return "done"


def send_waiting_rounds(clustering_id: int) -> None:
    """Queues and sends the project's round 0 that waited for this pretraining (done or failed)."""
    with new_session() as session:
        project_id = session.scalar(select(PoolClustering.project_id).where(PoolClustering.id == clustering_id))
        released = session.scalars(release_waiting_rounds(project_id)).all()
        session.commit()
    for round_id in released:
        enqueue(Round, round_id)


def _offer_start_model(session, clustering: PoolClustering, checkpoint: bytes) -> None:
    """The network pretrained on the pool as a model version, and the project's start model while
    no round has trained one (a later round already builds on its own)."""
    project = session.get(Project, clustering.project_id)
    model = ModelVersion(
        project_id=project.id,
        name=f"pretrained on the pool (clustering {clustering.id}, no labels)",
        checkpoint_key=get_blob_store().put(checkpoint),
        class_names=[c.name for c in project.classes],
        metrics={},
        training={"pretext": clustering.config, "pretext_loss": clustering.metrics.get("pretext_loss")},
    )
    session.add(model)
    session.flush()
    clustering.metrics = {**clustering.metrics, "model_version_id": model.id}
    trained = session.scalar(
        select(Round.id).where(Round.project_id == project.id, Round.model_version_id.is_not(None)).limit(1)
    )
    if trained is None:
        project.start_model_id = model.id
        clustering.metrics = {**clustering.metrics, "start_model": True}


def _training_config(config: dict):
    from worker.ml.deep_clustering import DeepClusteringConfig

    return DeepClusteringConfig(
        pretrain_epochs=config["pretrain_epochs"], cluster_epochs=config["cluster_epochs"], seed=config.get("seed", 0)
    )


def _pool_chunks(pool_size: int, config: dict) -> list[tuple[int, int]]:
    """On the encoding batches: every batch holds the cells one pass would give it."""
    from worker.ml.chunking import batch_aligned_chunks

    return batch_aligned_chunks(pool_size, get_settings().scoring_chunk_size, _training_config(config).batch_size)
