"""Celery tasks: thin wrappers that hand over to worker.rounds and worker.clustering."""

from backend.core.jobs import Task
from worker.celery_app import celery_app


@celery_app.task(name=Task.RUN_ROUND)
def run_round(round_id: int) -> str:
    from worker.round_job import run_round as run

    return run(round_id)


@celery_app.task(name=Task.CLUSTER_POOL)
def cluster_pool(clustering_id: int) -> str:
    from worker.clustering import run_clustering

    return run_clustering(clustering_id)


@celery_app.task(name=Task.ENCODE_CHUNK)
def encode_chunk(clustering_id: int, attempt: int, index: int) -> str:
    from worker.clustering import encode_chunk as encode

    return encode(clustering_id, attempt, index)
