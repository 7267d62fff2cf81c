"""A round as a worker runs it, from the message to the stored result: claim the round, gather
its inputs, compute it (worker.rounds), its pool scored in this process or, for a large pool,
in chunks by every worker on the queue (worker.chunks), and store it, all while holding the
round's lease (worker.jobs)."""

import logging

from backend.core.db.models import Round
from backend.core.db.session import new_session
from worker.chunks import ChunkedScoring, needs_chunks
from worker.jobs import claim, holding_lease, mark_failed, remove_job_folders, set_progress
from worker.rounds import compute_round, diagnose_previous_batch, gather_round, score_in_process, store_round

log = logging.getLogger(__name__)


def run_round(round_id: int) -> str:
    with new_session() as session:
        round_ = claim(session, Round, round_id)
        if round_ is None:
            return "skipped"
        diagnose_previous_batch(session, round_)
        inputs = gather_round(session, round_)
    attempt = round_.attempts
    chunked = ChunkedScoring(round_id, attempt) if needs_chunks(inputs) else None
    with holding_lease(Round, round_id, attempt):
        try:
            result = compute_round(
                inputs, lambda **progress: set_progress(Round, round_id, **progress), chunked or score_in_process
            )
            if chunked is not None:
                result.summary["chunks"] = chunked.summary
        except Exception as error:
            log.exception("round %s failed", round_id)
            mark_failed(Round, round_id, attempt, error)
            return "failed"
        finally:
            if chunked is not None:
                remove_job_folders(Round, round_id, attempt)
        store_round(round_id, inputs, result)
    return "done"
