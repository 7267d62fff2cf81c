"""coverage-entropy and coverage-margin: typical cells of the parts of the pool no label covers,
then diverse uncertainty (by entropy or by margin)."""

import numpy as np
import pytest
import torch

from worker.ml.coverage import coverage_order, parse_options, typicality, uncertainty_order
from worker.ml.strategies import SelectionContext, rank_pool


def blobs(centres: np.ndarray, per_blob: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = np.concatenate([c + spread * rng.standard_normal((per_blob, len(c))) for c in centres])
    return points, np.repeat(np.arange(len(centres)), per_blob)


CENTRES = 5 * np.eye(4)  # four well separated groups in 4-D


def test_typicality_is_highest_in_the_dense_middle():
    rng = np.random.default_rng(0)
    points = np.concatenate([np.zeros((1, 2)), 0.1 * rng.standard_normal((30, 2)), [[3.0, 3.0]]])
    value = typicality(points, neighbours=5)
    assert value[-1] == value.min()  # the outlier
    assert value[0] > np.median(value)  # the centre


def test_coverage_picks_a_typical_cell_of_each_group_no_label_covers():
    pool, group = blobs(CENTRES, per_blob=40, spread=0.3)
    labeled = CENTRES[:1] + 0.01  # one label, in group 0
    order, details, summary = coverage_order(pool, labeled, batch=3, neighbours=10, seed=0)
    first = order[:3]
    assert sorted(group[first]) == [1, 2, 3]  # the three uncovered groups, one cell each
    for index in first:
        members = pool[group == group[index]]
        assert np.linalg.norm(pool[index] - members.mean(0)) < 0.5  # near its group's middle
        assert details[list(order).index(index)]["cluster_covered"] is False
    assert sorted(order) == list(range(len(pool)))  # the whole pool is ranked once
    assert summary["uncovered_clusters"] >= 3


def test_uncertainty_spreads_the_batch_over_the_uncertain_cells():
    pool, group = blobs(CENTRES[:2], per_blob=50, spread=0.2)
    entropy = np.where(group == 0, 1.0, 0.9) + 0.001 * np.arange(len(pool)) / len(pool)
    order, details, _ = uncertainty_order(pool, entropy, batch=2, candidates=100, seed=0)
    # plain entropy would take two cells of group 0; spread over the shortlist, one of each
    assert sorted(group[order[:2]]) == [0, 1]
    assert all(d["spread_pick"] for d in details[:2]) and not details[2]["spread_pick"]
    assert sorted(order) == list(range(len(pool)))


def _context(pool_embeddings, probabilities, accuracy, labeled_embeddings, options=None) -> SelectionContext:
    context = SelectionContext(
        model=None,
        device=torch.device("cpu"),
        labeled_images=np.zeros((len(labeled_embeddings), 112, 112), np.float32),
        labeled_labels=np.zeros(len(labeled_embeddings), np.int64),
        pool_size=len(pool_embeddings),
        load_pool_images=lambda: None,
        rng=np.random.default_rng(0),
        options=options or {},
        cached_pool_probabilities=probabilities,
        cached_pool_embeddings=pool_embeddings,
        batch_cells=3,
        model_accuracy=accuracy,
    )
    context.labeled_embeddings = lambda: labeled_embeddings  # as the model's trunk would give them
    return context


@pytest.mark.parametrize("strategy", ["coverage-entropy", "coverage-margin"])
@pytest.mark.parametrize(
    "accuracy, phase", [(None, "coverage"), (0.5, "coverage"), (0.85, "uncertainty"), (0.95, "uncertainty")]
)
def test_the_model_accuracy_hands_over_from_coverage_to_uncertainty(strategy, accuracy, phase):
    pool, _ = blobs(CENTRES, per_blob=20, spread=0.3)
    probabilities = np.random.default_rng(1).dirichlet(np.ones(4), len(pool))
    ranking = rank_pool(strategy, _context(pool, probabilities, accuracy, CENTRES[:1]))
    assert ranking.summary["phase"] == phase
    assert ranking.summary["handover_accuracy"] == 0.85
    assert {d["phase"] for d in ranking.details} == {phase}


def test_the_two_hybrids_measure_uncertainty_each_their_own_way():
    # cell 0: torn between two classes, sure it is one of them (low entropy, a near tie);
    # cell 1: spread over all four classes but with a clear favourite (high entropy, no tie)
    pool, _ = blobs(CENTRES[:1], per_blob=40, spread=0.3)
    probabilities = np.tile([0.97, 0.01, 0.01, 0.01], (len(pool), 1))
    probabilities[0] = [0.5, 0.5, 0.0, 0.0]
    probabilities[1] = [0.55, 0.15, 0.15, 0.15]
    by_entropy = rank_pool("coverage-entropy", _context(pool, probabilities, 0.9, CENTRES[:1]))
    by_margin = rank_pool("coverage-margin", _context(pool, probabilities, 0.9, CENTRES[:1]))
    assert by_entropy.order[0] == 1 and by_margin.order[0] == 0
    assert by_margin.details[0]["margin"] == pytest.approx(1.0) and "entropy" not in by_margin.details[0]
    assert by_entropy.details[0]["entropy"] > 1.0


def test_options_are_checked():
    assert parse_options({"handover_accuracy": 0.7}).handover_accuracy == 0.7
    for bad in (
        {"handover_accuracy": 1.5},
        {"handover_accuracy": "high"},
        {"candidates": 0},
        {"neighbours": True},
        {"k": 1},
    ):
        with pytest.raises(ValueError):
            parse_options(bad)
