"""A round as a worker runs it, from the message to the stored result: claim the round, gather
its inputs, compute it in one pass (worker.rounds) or have its pool scored in chunks by every
worker (worker.chunks), and store it, all while holding the round's lease (worker.jobs)."""

import logging

from backend.core.db.models import Round
from backend.core.db.session import new_session
from worker.chunks import needs_chunks, score_in_chunks
from worker.jobs import claim, holding_lease, mark_failed, set_progress
from worker.rounds import compute_round, diagnose_previous_batch, gather_round, store_round

log = logging.getLogger(__name__)


def run_round(round_id: int) -> str:
    with new_session() as session:
        round_ = claim(session, Round, round_id)
        if round_ is None:
            return "skipped"
        diagnose_previous_batch(session, round_)
        inputs = gather_round(session, round_)
    with holding_lease(Round, round_id, round_.attempts):
        try:
            if needs_chunks(inputs):  # many workers score the pool; the last chunk's task stores the round
                return score_in_chunks(round_id, round_.attempts, inputs)
            result = compute_round(inputs, lambda **progress: set_progress(Round, round_id, **progress))
        except Exception as error:
            log.exception("round %s failed", round_id)
            mark_failed(Round, round_id, round_.attempts, error)
            return "failed"
        store_round(round_id, inputs, result)
    return "done"
