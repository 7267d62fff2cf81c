"""How many cells a round queues beyond its step: the fixed share, or what the annotators' pace
over the next round's expected wait needs, within what the pool and the budget leave."""

import pytest

from worker.rounds import RESERVE_SAFETY, ReservePlan


def _plan(pace, trained_on=200, servable=1000):
    return ReservePlan(servable=servable, share=0.5, pace_labels_per_s=pace, opened_at=1000.0, trained_on=trained_on)


def test_the_next_rounds_wait_is_this_rounds_so_far_scaled_by_the_labels():
    # 100 s so far, on 200 labels; the next round trains on 300 and the 100 given meanwhile at 1 a
    # second: 200 s expected, 1.5 x 200 labels, and the 100 cells labeled meanwhile that this
    # round may have picked
    assert RESERVE_SAFETY == 1.5
    assert _plan(1.0).size(batch=100, now=1100.0) == (400, {"size": 400, "pace_labels_per_s": 1.0, "expected_wait_s": 200.0})


@pytest.mark.parametrize(
    "plan, expected",
    [
        (_plan(None), 50),  # no pace yet: the share of the step
        (_plan(1.0, trained_on=0), 50),  # round 0: it trains on nothing, nothing to scale
        (_plan(0.01), 50),  # a slow pace needs fewer than the share
        (_plan(1.0, servable=300), 300),  # never more than can be served
        (_plan(1.0, servable=-6), 0),  # the budget's last step
    ],
)
def test_the_share_of_the_step_at_least_and_what_can_be_served_at_most(plan, expected):
    assert plan.size(batch=100, now=1100.0)[0] == expected
