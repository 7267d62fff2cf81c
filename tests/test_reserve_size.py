"""How many cells a round queues beyond its step: the fixed share, or what the annotators'
pace over the next round's expected wait needs, within what the pool and the budget leave."""

import pytest

from worker.rounds import RESERVE_SAFETY, ReservePlan, reserve_size


@pytest.mark.parametrize(
    "pace, wait, expected",
    [
        (None, None, 5),  # nothing measured yet (the first rounds): the share of the step
        (0.5, None, 5),
        (None, 60.0, 5),
        (0.1, 20.0, 5),  # 2 labels in the wait, times the safety: fewer than the share
        (0.5, 60.0, 45),  # 30 labels in the wait, times 1.5
        (2.0, 600.0, 90),  # more than can be served beyond the step: all that can
    ],
)
def test_the_reserve_covers_the_expected_wait_at_the_annotators_pace(pace, wait, expected):
    assert RESERVE_SAFETY == 1.5
    assert reserve_size(10, 90, 0.5, pace, wait) == expected


def test_no_reserve_where_none_could_be_served():
    assert reserve_size(10, 0, 0.5, 2.0, 600.0) == 0
    assert reserve_size(10, -6, 0.5, None, None) == 0  # the budget's last step


def test_the_next_rounds_wait_is_this_rounds_so_far_scaled_by_the_labels():
    plan = ReservePlan(servable=500, share=0.5, pace_labels_per_s=1.0, opened_at=1000.0, trained_on=200, labels_next=300)
    # 100 s so far, on 200 labels; the next trains on 300 and the 100 given meanwhile at 1 a second:
    # 1.5 x 200 s at 1 a second, and the 100 cells labeled meanwhile that the round may have picked
    size, basis = plan.size(batch=100, now=1100.0)
    assert basis == {"size": 400, "pace_labels_per_s": 1.0, "expected_wait_s": 200.0} and size == 400
    assert plan.size(batch=100, now=1400.0)[0] == 500  # never more than can be served
    first = ReservePlan(servable=500, share=0.5, pace_labels_per_s=None, opened_at=1000.0, trained_on=0, labels_next=100)
    assert first.size(batch=100, now=1100.0) == (50, {"size": 50, "pace_labels_per_s": None, "expected_wait_s": None})
