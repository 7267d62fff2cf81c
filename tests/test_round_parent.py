"""What a round trains from: the previous round's model (warm start) or the start model again."""

import pytest

from worker.rounds import round_parent


@pytest.mark.parametrize(
    "previous, start, fine_tune_from, expected",
    [
        (None, None, "previous", (None, False)),  # round 1 of a project with no start model: a fresh network
        (None, "start", "previous", ("start", True)),  # round 1: the start model, transferred
        ("round-3", "start", "previous", ("round-3", False)),
        ("round-3", None, "previous", ("round-3", False)),
        (None, "start", "start", ("start", True)),
        ("round-3", "start", "start", ("start", True)),  # every round from the start model
        ("round-3", None, "start", (None, False)),  # every round from a fresh network
    ],
)
def test_a_round_trains_from_what_fine_tune_from_says(previous, start, fine_tune_from, expected):
    assert round_parent(previous, start, {"fine_tune_from": fine_tune_from}) == expected


def test_warm_start_is_what_a_project_without_the_setting_gets():
    assert round_parent("round-3", "start", {}) == ("round-3", False)


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="fine_tune_from 'latest'"):
        round_parent("round-3", "start", {"fine_tune_from": "latest"})
