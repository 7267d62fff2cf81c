"""Celery tasks: thin wrappers that hand over to worker.rounds and worker.clustering."""
import logging

from celery.signals import worker_ready

from worker.celery_app import celery_app

log = logging.getLogger(__name__)


@celery_app.task(name="xal.run_round")
def run_round(round_id: int) -> str:
    from worker.rounds import run_round as compute_round

    return compute_round(round_id)


@celery_app.task(name="xal.cluster_pool")
def cluster_pool(clustering_id: int) -> str:
    from worker.clustering import run_clustering

    return run_clustering(clustering_id)


@worker_ready.connect
def resume_unfinished_clusterings(**_kwargs) -> None:
    """Pool clusterings left queued (broker was down) or running (a worker died) are sent
    again; one that is already done ignores the message. (Rounds need no such thing: the API's
    sweeper re-sends them by their lease, backend.services.rounds.send_waiting_rounds.)"""
    from worker.clustering import unfinished_clustering_ids

    for clustering_id in unfinished_clustering_ids():
        log.info("resuming pool clustering %s", clustering_id)
        cluster_pool.apply_async(args=[clustering_id])
