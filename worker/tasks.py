"""Celery tasks: thin wrappers that hand over to worker.rounds and worker.clustering."""
from worker.celery_app import celery_app


@celery_app.task(name="xal.run_round")
def run_round(round_id: int) -> str:
    from worker.rounds import run_round as compute_round

    return compute_round(round_id)


@celery_app.task(name="xal.cluster_pool")
def cluster_pool(clustering_id: int) -> str:
    from worker.clustering import run_clustering

    return run_clustering(clustering_id)


@celery_app.task(name="xal.encode_chunk")
def encode_chunk(clustering_id: int, attempt: int, index: int) -> str:
    from worker.clustering import encode_chunk as encode

    return encode(clustering_id, attempt, index)


@celery_app.task(name="xal.merge_clustering")
def merge_clustering(clustering_id: int, attempt: int) -> str:
    from worker.clustering import merge_clustering as merge

    return merge(clustering_id, attempt)
