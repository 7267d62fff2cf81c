"""The explainable strategies: score functions on arrays, centres, and whole rankings of real cells."""

import json

import numpy as np
import pytest
import torch

from backend.core.images import load_cell
from conftest import balanced_sample
from worker.ml.network import ParallelResidualNet
from worker.ml.strategies import STRATEGIES, SelectionContext, rank_pool
from worker.ml.training import TrainingConfig, train_classifier
from worker.ml.xal import (
    XalOptions,
    balanced_subset,
    cluster_vectors,
    degeneracy,
    find_centres,
    group_medoids,
    l2_normalise,
    medoid,
    parse_options,
    xal_entropy_scores,
    xal_least_scores,
    xal_margin_scores,
)

CPU = torch.device("cpu")

DISTANCES = np.array(
    [
        [1.0, 4.0, 5.0],  # 0: close to centre 0
        [2.0, 2.0, 2.0],  # 1: equidistant
        [1.0, 1.2, 7.8],  # 2: torn between centres 0 and 1
        [3.0, 3.0, 4.0],  # 3: nearly equidistant
    ]
)


def blobs(n_per_blob: int, centres: np.ndarray, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centres)), n_per_blob)
    return centres[labels] + spread * rng.normal(size=(len(labels), centres.shape[1])), labels


# --- score functions ---


def test_entropy_ranks_the_equidistant_row_first():
    scores = xal_entropy_scores(DISTANCES)
    assert np.argsort(-scores).tolist() == [1, 3, 0, 2]
    assert scores[1] == pytest.approx(np.log(3))


def test_margin_is_the_negated_gap_between_the_two_nearest_centres_over_the_distance_sum():
    scores = xal_margin_scores(DISTANCES)
    np.testing.assert_allclose(scores, [-3 / 10, 0.0, -0.2 / 10, 0.0])
    # Equidistant-to-the-nearest-two rows (1 and 3) tie on top; the row torn between two follows.
    assert np.argsort(-scores, kind="stable").tolist() == [1, 3, 2, 0]


def test_least_is_the_smallest_distance_share():
    scores = xal_least_scores(DISTANCES)
    np.testing.assert_allclose(scores, [0.1, 1 / 3, 0.1, 0.3])
    assert scores.argmax() == 1


def test_a_cell_on_every_centre_gets_uniform_shares_not_nan():
    zero = np.zeros((1, 4))
    assert xal_entropy_scores(zero)[0] == pytest.approx(np.log(4))
    assert xal_least_scores(zero)[0] == pytest.approx(0.25)
    assert xal_margin_scores(zero)[0] == 0.0


# --- centres ---


def test_medoid_is_the_member_with_the_least_summed_distance_not_the_one_nearest_the_mean():
    points = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    # Summed distances: 106, 103, 102, 103, 394; the mean 21.2 lies nearest to 3.0.
    assert medoid(points) == 2


def test_group_medoids_gives_each_group_its_own_medoid():
    points = np.array([[0.0, 0], [0, 1], [0, 2], [10, 0], [10, 1], [13, 5]])
    groups = np.array([4, 4, 4, 7, 7, 7])
    ids, medoids = group_medoids(points, groups)
    assert ids.tolist() == [4, 7] and medoids.tolist() == [1, 4]


def test_per_class_centres_are_the_class_medoids():
    vectors, labels = blobs(10, np.eye(3) * 5, 0.5)
    centres = find_centres(vectors, labels, "classes", n_clusters=3, pca_dims=50)
    assert centres.classes.tolist() == [0, 1, 2]
    for k in range(3):
        members = np.flatnonzero(labels == k)
        assert centres.reference_medoids[k] == members[medoid(vectors[members])]
    assert centres.sizes.tolist() == [10, 10, 10] and centres.ari == 1.0
    assert centres.degenerate_reason is None


def test_well_separated_blobs_cluster_into_their_classes():
    vectors, labels = blobs(20, np.eye(6) * 10, 0.5)
    centres = find_centres(vectors, labels, "clusters", n_clusters=6, pca_dims=50)
    assert centres.ari == 1.0 and centres.sizes.tolist() == [20] * 6
    assert centres.degenerate_reason is None
    assert sorted(centres.classes.tolist()) == list(range(6))
    assert np.array_equal(centres.classes, centres.majority_classes)


def test_a_giant_cluster_plus_outliers_is_reported_degenerate():
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(size=(95, 8)), rng.normal(size=(5, 8)) + 40 * np.eye(8)[:5]])
    centres = find_centres(vectors, np.arange(100) % 6, "clusters", n_clusters=6, pca_dims=50)
    assert sorted(centres.sizes.tolist()) == [1, 1, 1, 1, 1, 95]
    assert "largest cluster holds 95%" in centres.degenerate_reason
    assert "clusters hold fewer than" in degeneracy(np.array([40, 40, 1, 1, 1, 1]))
    assert degeneracy(np.array([30, 20, 20, 10, 10, 10])) is None


def test_high_dimensional_vectors_are_reduced_by_pca_before_clustering():
    centres = np.zeros((3, 6272))
    centres[0, :100], centres[1, 100:200], centres[2, 200:300] = 1.0, 1.0, 1.0
    vectors, labels = blobs(15, centres, 0.02)
    found = cluster_vectors(l2_normalise(vectors), 3, pca_dims=10)
    assert sorted(np.bincount(found).tolist()) == [15, 15, 15]
    assert all(len(set(found[labels == k])) == 1 for k in range(3))


def test_ten_thousand_vectors_cluster_with_fastcluster():
    vectors = np.random.default_rng(0).normal(size=(10_000, 50))
    labels = cluster_vectors(vectors, 6, pca_dims=50)
    assert labels.shape == (10_000,) and set(labels.tolist()) == set(range(6))


def test_the_reference_sample_is_class_balanced_and_fills_up_from_larger_classes():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 4)
    chosen = balanced_subset(labels, 24, np.random.default_rng(0))
    assert len(chosen) == 24 and len(set(chosen.tolist())) == 24
    assert np.bincount(labels[chosen]).tolist() == [10, 10, 4]
    again = balanced_subset(labels, 24, np.random.default_rng(0))
    assert np.array_equal(chosen, again)
    assert balanced_subset(labels, 100, np.random.default_rng(0)).tolist() == list(range(84))


# --- options ---


def test_options_default_to_concept_clusters_and_deeptaylor():
    assert parse_options({}) == XalOptions("deeptaylor", "concept", "clusters", 50, 2000, None)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"representation": "sorted"}, r"'representation' is 'sorted'; allowed: pixel, concept"),
        ({"centres": "means"}, r"'centres' is 'means'; allowed: clusters, classes"),
        (
            {"relevance_method": "occlusion"},
            r"'relevance_method' is 'occlusion'; allowed: deeptaylor, lrp-epsilon, gradient",
        ),
        ({"pca_dims": 0}, r"'pca_dims' is 0; allowed: an integer >= 1"),
        ({"n_clusters": 1}, r"'n_clusters' is 1; allowed: an integer >= 2"),
        ({"max_reference": "all"}, r"'max_reference' is 'all'"),
        ({"represenation": "pixel"}, r"unknown xal option\(s\) 'represenation'; known: relevance_method"),
    ],
)
def test_bad_options_are_named_with_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        parse_options(options)


# --- whole rankings of real cells ---


@pytest.fixture(scope="module")
def real_cells(i3a_dir, i3a_rows):
    """60 training cells; L = 30 other cells (4-6 per class), U = 30 more."""
    classes = sorted({row["pattern"] for row in i3a_rows})

    def load(rows):
        images = np.stack([load_cell((i3a_dir / row["image_path"]).read_bytes()) for row in rows])
        return images, np.array([classes.index(row["pattern"]) for row in rows])

    train = load([row for start in range(0, 500, 100) for row in balanced_sample(i3a_rows, 2, start)])
    labeled = load([row for start in (50, 250, 450) for row in balanced_sample(i3a_rows, 2, start)][:30])
    pool = load([row for start in (60, 260, 460) for row in balanced_sample(i3a_rows, 2, start)][:30])
    return train, labeled, pool


@pytest.fixture(scope="module")
def model(real_cells):
    (images, labels), _, _ = real_cells
    torch.manual_seed(0)
    config = TrainingConfig(max_epochs=3, batch_size=32, seed=0)
    return train_classifier(ParallelResidualNet(6), images, labels, config, CPU).model


def context(model, real_cells, options: dict) -> SelectionContext:
    _, (labeled_images, labeled_labels), (pool_images, _) = real_cells
    return SelectionContext(
        model=model,
        device=CPU,
        labeled_images=labeled_images,
        labeled_labels=labeled_labels,
        pool_size=len(pool_images),
        load_pool_images=lambda: pool_images,
        rng=np.random.default_rng(0),
        options=options,
    )


def test_the_xal_strategies_are_registered():
    assert {"xal-entropy", "xal-margin", "xal-least"} <= set(STRATEGIES)


@pytest.mark.parametrize("representation", ["concept", "pixel"])
@pytest.mark.parametrize("centres", ["clusters", "classes"])
def test_xal_margin_ranks_real_cells_and_explains_each_pick(model, real_cells, representation, centres):
    ranking = rank_pool("xal-margin", context(model, real_cells, {"representation": representation, "centres": centres}))
    _, (_, labeled_labels), _ = real_cells
    json.dumps(ranking.details), json.dumps(ranking.summary)

    assert sorted(ranking.order.tolist()) == list(range(30))
    assert all(a >= b for a, b in zip(ranking.scores, ranking.scores[1:]))
    n_centres = ranking.summary["n_centres"]
    assert n_centres == 6
    for score, detail in zip(ranking.scores, ranking.details):
        assert (detail["strategy"], detail["representation"], detail["centres"]) == ("xal-margin", representation, centres)
        assert len(detail["distances"]) == n_centres
        assert score == pytest.approx(xal_margin_scores(np.array([detail["distances"]]))[0])
        assert len(detail["nearest"]) == 3
        assert [n["distance"] for n in detail["nearest"]] == sorted(detail["distances"])[:3]
        for nearest in detail["nearest"]:
            assert 0 <= nearest["labeled_index"] < len(labeled_labels)
            assert nearest["class"] == labeled_labels[nearest["labeled_index"]]
        assert 0 <= detail["predicted"] < 6
        assert ("top_channels" in detail) == (representation == "concept")
    if representation == "concept":
        shares = [c["share"] for c in ranking.details[0]["top_channels"]]
        assert len(shares) == 5 and shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9

    summary = ranking.summary
    assert summary["n_reference"] == 30 and sum(summary["cluster_sizes"]) == 30
    assert set(summary["timings"]) == {"relevance_s", "clustering_s", "distances_s"}
    assert isinstance(summary["degenerate"], bool) and -1 <= summary["ari"] <= 1
    medoid_classes = [c["class"] for c in summary["centre_medoids"]]
    if centres == "classes":
        assert medoid_classes == list(range(6)) and not summary["degenerate"]


@pytest.mark.parametrize("name", ["xal-entropy", "xal-least"])
def test_other_xal_strategies_rank_with_a_capped_reference_set(model, real_cells, name):
    options = {"max_reference": 12, "relevance_method": "lrp-epsilon"}
    ranking = rank_pool(name, context(model, real_cells, options))
    assert sorted(ranking.order.tolist()) == list(range(30))
    assert ranking.summary["n_reference"] == 12 and ranking.summary["relevance_method"] == "lrp-epsilon"
    _, (_, labeled_labels), _ = real_cells
    referenced = [c["labeled_index"] for c in ranking.summary["centre_medoids"]]
    assert all(0 <= i < len(labeled_labels) for i in referenced)


def test_a_bad_option_fails_the_ranking_with_its_name(model, real_cells):
    with pytest.raises(ValueError, match="'centres' is 'kmeans'"):
        rank_pool("xal-margin", context(model, real_cells, {"centres": "kmeans"}))
