import json

import numpy as np
import pytest
import torch

from worker.ml.network import ParallelResidualNet
from worker.ml.strategies import (
    STRATEGIES,
    Ranking,
    SelectionContext,
    Strategy,
    cluster_spread_ranking,
    entropy_scores,
    least_confidence_scores,
    margin_scores,
    rank_by_scores,
    rank_pool,
)

PROBABILITIES = np.array(
    [
        [0.90, 0.05, 0.05],  # 0: confident
        [1 / 3, 1 / 3, 1 / 3],  # 1: uniform
        [0.50, 0.50, 0.00],  # 2: a coin flip between two classes
        [0.60, 0.30, 0.10],  # 3
    ]
)


def context_with(probabilities: np.ndarray, seed: int = 0) -> SelectionContext:
    """A context whose pool softmax outputs are given, as if computed by shards."""
    n = len(probabilities)
    return SelectionContext(
        model=None,
        device=torch.device("cpu"),
        labeled_images=np.zeros((0, 112, 112), np.float32),
        labeled_labels=np.zeros(0, np.int64),
        pool_size=n,
        load_pool_images=lambda: np.zeros((n, 112, 112), np.float32),
        rng=np.random.default_rng(seed),
        cached_pool_probabilities=probabilities,
    )


def test_entropy_ranks_the_uniform_row_first():
    ranking = rank_pool("entropy", context_with(PROBABILITIES))
    assert ranking.order.tolist() == [1, 3, 2, 0]
    assert ranking.scores[0] == pytest.approx(np.log(3))
    assert entropy_scores(np.array([[1.0, 0.0, 0.0]]))[0] == 0.0  # 0 log 0 = 0, no NaN


def test_least_confidence_is_one_minus_the_top_probability():
    ranking = rank_pool("least_confidence", context_with(PROBABILITIES))
    assert ranking.order.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(ranking.scores, [2 / 3, 0.5, 0.4, 0.1])


def test_margin_ranks_small_gaps_between_the_top_two_first():
    # Rows 1 and 2 both have margin 0: the tie goes to the lower pool index.
    ranking = rank_pool("margin", context_with(PROBABILITIES))
    assert ranking.order.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(ranking.scores, [1.0, 1.0, 0.7, 0.15])


def test_margin_and_least_confidence_disagree_where_they_should():
    probabilities = np.array([[0.50, 0.49, 0.01], [0.40, 0.30, 0.30]])
    assert margin_scores(probabilities).argmax() == 0  # gap 0.01 vs 0.10
    assert least_confidence_scores(probabilities).argmax() == 1  # top 0.40 vs 0.50


def test_softmax_rankings_carry_json_details_aligned_with_the_order():
    ranking = rank_pool("entropy", context_with(PROBABILITIES))
    for index, detail in zip(ranking.order, ranking.details):
        assert detail["probabilities"] == pytest.approx(PROBABILITIES[index].tolist())
        assert detail["predicted"] == int(PROBABILITIES[index].argmax())
    json.dumps(ranking.details)
    assert all(a >= b for a, b in zip(ranking.scores, ranking.scores[1:]))


def test_random_is_a_permutation_fixed_by_the_seed():
    probabilities = np.full((50, 3), 1 / 3)
    first = rank_pool("random", context_with(probabilities, seed=7))
    again = rank_pool("random", context_with(probabilities, seed=7))
    other = rank_pool("random", context_with(probabilities, seed=8))
    assert sorted(first.order.tolist()) == list(range(50))
    assert np.array_equal(first.order, again.order) and np.array_equal(first.scores, again.scores)
    assert not np.array_equal(first.order, other.order)


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(KeyError) as raised:
        rank_pool("most-confusing", context_with(PROBABILITIES))
    assert isinstance(raised.value, ValueError)
    assert "most-confusing" in str(raised.value)
    for name in ["random", "entropy", "least_confidence", "margin"]:
        assert name in str(raised.value)


def test_a_new_strategy_is_one_function_and_one_registry_line(monkeypatch):
    def labeled_set_size(context: SelectionContext) -> Ranking:
        return rank_by_scores(np.full(len(context.pool_images), float(len(context.labeled_labels))))

    monkeypatch.setitem(STRATEGIES, "labeled-set-size", Strategy(labeled_set_size))
    ranking = rank_pool("labeled-set-size", context_with(PROBABILITIES))
    assert ranking.order.tolist() == [0, 1, 2, 3] and ranking.details == [{}] * 4


def test_a_strategy_that_drops_pool_items_is_caught(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "broken", Strategy(lambda context: rank_by_scores(np.zeros(2))))
    with pytest.raises(RuntimeError, match="exactly once"):
        rank_pool("broken", context_with(PROBABILITIES))


def test_pool_probabilities_come_from_the_model_once():
    torch.manual_seed(0)
    context = SelectionContext(
        model=ParallelResidualNet(4),
        device=torch.device("cpu"),
        labeled_images=np.zeros((0, 112, 112), np.float32),
        labeled_labels=np.zeros(0, np.int64),
        pool_size=5,
        load_pool_images=lambda: np.random.default_rng(0).random((5, 112, 112)).astype(np.float32),
        rng=np.random.default_rng(0),
    )
    probabilities = context.pool_probabilities()
    assert probabilities.shape == (5, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert context.pool_probabilities() is probabilities
    ranking = rank_pool("margin", context)
    assert [d["predicted"] for d in ranking.details] == probabilities[ranking.order].argmax(axis=1).tolist()


def test_cluster_spread_visits_every_cluster_before_repeating_one():
    clusters = np.array([0] * 10 + [1] * 3 + [2] * 1 + [5] * 6)
    ranking = cluster_spread_ranking(clusters, np.random.default_rng(0))
    assert sorted(ranking.order.tolist()) == list(range(len(clusters)))  # a permutation of the pool
    picked = clusters[ranking.order]
    assert set(picked[:4].tolist()) == {0, 1, 2, 5}  # the first k = number of clusters cover them all
    assert set(picked[4:7].tolist()) == {0, 1, 5}  # then round-robin over the clusters left
    assert np.all(np.diff(ranking.scores) < 0)
    assert ranking.details[0] == {"strategy": "cluster-spread", "cluster": int(picked[0])}
    json.dumps(ranking.details)


def test_cluster_spread_is_fixed_by_the_seed():
    clusters = np.arange(30) % 4
    first = cluster_spread_ranking(clusters, np.random.default_rng(7)).order
    assert np.array_equal(first, cluster_spread_ranking(clusters, np.random.default_rng(7)).order)
    assert not np.array_equal(first, cluster_spread_ranking(clusters, np.random.default_rng(8)).order)


def test_every_strategy_says_what_it_reads_of_the_pool_and_how_to_check_its_options():
    from worker.ml.strategies import compute_pool_outputs

    assert compute_pool_outputs(None, np.zeros((3, 112, 112), np.float32), "random", {}, torch.device("cpu")) is None
    model = ParallelResidualNet(3)
    images = np.random.default_rng(0).random((4, 112, 112)).astype(np.float32)
    outputs = compute_pool_outputs(model, images, "coverage-entropy", {}, torch.device("cpu"))
    assert outputs.probabilities.shape == (4, 3) and outputs.embeddings.shape == (4, 128)
    # the xal strategies' probabilities come from their relevance pass's logits: the model's own
    xal = compute_pool_outputs(model, images, "xal-entropy", {}, torch.device("cpu"))
    assert np.allclose(xal.probabilities, outputs.probabilities, atol=1e-4)
