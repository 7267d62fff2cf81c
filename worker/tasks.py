"""Celery tasks: thin wrappers that hand over to worker.rounds."""
import logging

from celery.signals import worker_ready

from worker.celery_app import celery_app

log = logging.getLogger(__name__)


@celery_app.task(name="xal.run_round")
def run_round(round_id: int) -> str:
    from worker.rounds import run_round as compute_round

    return compute_round(round_id)


@worker_ready.connect
def resume_unfinished_rounds(**_kwargs) -> None:
    """Rounds left queued (broker was down) or running (a worker died) are sent again;
    a round that is already done ignores the message."""
    from worker.rounds import unfinished_round_ids

    for round_id in unfinished_round_ids():
        log.info("resuming round %s", round_id)
        run_round.apply_async(args=[round_id])
