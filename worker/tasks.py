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
