"""How many cells a round queues beyond its step: the fixed share, or what the annotators'
pace over the next round's expected wait needs, within what the pool and the budget leave."""

import pytest

from worker.rounds import RESERVE_SAFETY, reserve_size


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
