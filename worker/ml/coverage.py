"""Cold-start-aware selection: cover the pool first, then ask about what the model is unsure of.

With few labels an uncertainty ranking is the ranking of a weak model: it picks cells near
boundaries that are still wrong, many alike, few of the rarer classes, and loses to random
sampling (the cold-start problem; Hacohen et al. 2022, "Active learning on a budget"). What
helps there is coverage: the most typical cell of each part of the pool that no label
represents yet (TypiClust). Once the model is good enough its uncertainty becomes worth
following; the uncertain cells are then spread over the pool so that one batch does not ask the
same question many times (Zhdanov 2019, "Diverse mini-batch active learning").

`coverage-entropy` and `coverage-margin` do both, in the model's feature space
(`ParallelResidualNet.embed`, L2-normalised; in round 0 the start model's, e.g. one pretrained
without labels on the pool), and differ only in how uncertainty is measured (softmax entropy, or
the margin between the two likeliest classes, as TCM does: Doucet et al. 2024, "Bridging
diversity and uncertainty in active learning with self-supervised pre-training"):

- coverage, while the model's validation accuracy is below `handover_accuracy` (and in
  round 0, which has no trained model): k-means of labeled + pool cells into |L| + batch
  clusters; the clusters that hold no labeled cell, largest first, each give their most
  typical cell (typicality = 1 / mean distance to its nearest neighbours in its cluster);
- uncertainty, from then on: the `candidates` x batch most uncertain cells, k-means into batch
  clusters, the most uncertain cell of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans

from .ranking import Ranking, SelectionContext, entropy_scores, margin_scores

PHASES = ("coverage", "uncertainty")
KMEANS_ITERATIONS = 50  # a batch's clusters need not converge to the last decimal


@dataclass(frozen=True)
class CoverageOptions:
    # the model's accuracy on its validation cells from which uncertainty takes over
    handover_accuracy: float = 0.85
    candidates: int = 3  # uncertainty phase: the batch is spread over the candidates x batch most uncertain cells
    neighbours: int = 20  # typicality: the nearest neighbours within the cell's cluster


def parse_options(options: dict) -> CoverageOptions:
    """Validate a project's options; a ValueError names the bad option and what is allowed."""
    known = [f.name for f in fields(CoverageOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown coverage option(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    accuracy = options.get("handover_accuracy", CoverageOptions.handover_accuracy)
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
        raise ValueError(f"coverage option 'handover_accuracy' is {accuracy!r}; allowed: a number in [0, 1]")
    for name in ("candidates", "neighbours"):
        value = options.get(name, getattr(CoverageOptions, name))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"coverage option {name!r} is {value!r}; allowed: an integer >= 1")
    return CoverageOptions(**options)


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def kmeans(points: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Each point's cluster (k-means++, one start)."""
    n_clusters = max(1, min(n_clusters, len(points)))
    return KMeans(n_clusters, n_init=1, max_iter=KMEANS_ITERATIONS, random_state=seed).fit_predict(points)


def typicality(points: np.ndarray, neighbours: int) -> np.ndarray:
    """1 / mean Euclidean distance to the `neighbours` nearest other points (all of them when
    fewer); a lone point gets 0."""
    if len(points) < 2:
        return np.zeros(len(points))
    distances = np.sort(cdist(points, points), axis=1)[:, 1 : neighbours + 1]
    return 1.0 / np.maximum(distances.mean(axis=1), 1e-12)


def coverage_order(
    pool: np.ndarray, labeled: np.ndarray, batch: int, neighbours: int, seed: int
) -> tuple[np.ndarray, list[dict], dict]:
    """Pool indices, most useful for coverage first: round-robin over the clusters (uncovered
    ones largest first, then covered ones largest first), each giving its cells in order of
    typicality. Returns the order, a detail per ordered cell and a summary."""
    clusters = kmeans(np.vstack([labeled, pool]), len(labeled) + batch, seed)
    labeled_clusters, pool_clusters = clusters[: len(labeled)], clusters[len(labeled) :]
    covered = set(labeled_clusters.tolist())
    ids, sizes = np.unique(pool_clusters, return_counts=True)
    by_use = sorted(zip(ids.tolist(), sizes.tolist()), key=lambda item: (item[0] in covered, -item[1], item[0]))
    queues, detail_of = [], {}
    for cluster, size in by_use:
        members = np.flatnonzero(pool_clusters == cluster)
        typical = typicality(pool[members], neighbours)
        ranked = members[np.lexsort((members, -typical))]
        queues.append(list(ranked[::-1]))  # popped from the end: most typical first
        for index, value in zip(members, typical):
            detail_of[int(index)] = {
                "phase": "coverage",
                "cluster": int(cluster),
                "cluster_size": int(size),
                "cluster_covered": cluster in covered,
                "typicality": float(value),
            }
    order = []
    while queues:
        for queue in queues:
            order.append(int(queue.pop()))
        queues = [queue for queue in queues if queue]
    summary = {
        "n_clusters": int(len(set(clusters.tolist()))),
        "uncovered_clusters": int(sum(c not in covered for c in ids.tolist())),
    }
    return np.array(order, dtype=np.int64), [detail_of[i] for i in order], summary


def uncertainty_order(
    pool: np.ndarray, uncertainty: np.ndarray, batch: int, candidates: int, seed: int, measure: str = "entropy"
) -> tuple[np.ndarray, list[dict], dict]:
    """Pool indices: first the most uncertain cell of each of `batch` clusters of the
    candidates x batch most uncertain cells, then every other cell by uncertainty. Each cell's
    detail holds its uncertainty under the name of its `measure`."""
    by_uncertainty = np.lexsort((np.arange(len(uncertainty)), -uncertainty))
    shortlist = by_uncertainty[: candidates * batch]
    clusters = kmeans(pool[shortlist], batch, seed)
    heads = []
    for cluster in np.unique(clusters):
        members = shortlist[clusters == cluster]
        heads.append(int(members[np.argmax(uncertainty[members])]))
    heads = sorted(heads, key=lambda i: (-uncertainty[i], i))
    chosen = set(heads)
    order = np.array(heads + [int(i) for i in by_uncertainty if int(i) not in chosen], dtype=np.int64)
    details = [{"phase": "uncertainty", measure: float(uncertainty[i]), "spread_pick": int(i) in chosen} for i in order]
    return order, details, {"shortlist": int(len(shortlist)), "n_clusters": int(len(heads))}


def _coverage_then(score: Callable[[np.ndarray], np.ndarray]) -> Callable[[SelectionContext], Ranking]:
    measure = score.__name__.removesuffix("_scores")

    def rank(context: SelectionContext) -> Ranking:
        options = parse_options(context.options)
        pool = normalised(context.pool_embeddings())
        labeled = normalised(context.labeled_embeddings()) if len(context.labeled_labels) else np.zeros((0, pool.shape[1]))
        batch = max(1, min(context.batch_cells, len(pool)))
        seed = int(context.rng.integers(2**31))
        accuracy = context.model_accuracy
        phase = "uncertainty" if accuracy is not None and accuracy >= options.handover_accuracy else "coverage"
        if phase == "coverage":
            order, details, summary = coverage_order(pool, labeled, batch, options.neighbours, seed)
        else:
            uncertainty = score(context.pool_probabilities())
            order, details, summary = uncertainty_order(pool, uncertainty, batch, options.candidates, seed, measure)
        return Ranking(
            order=order,
            scores=np.linspace(1.0, 0.0, len(order)) if len(order) else np.zeros(0),
            details=details,
            summary={"phase": phase, "model_accuracy": accuracy, "handover_accuracy": options.handover_accuracy, **summary},
        )

    rank.__name__ = f"coverage_{measure}"
    rank.__doc__ = f"Coverage of the pool until the model is good enough, then diverse {measure} uncertainty (module doc)."
    return rank


coverage_entropy = _coverage_then(entropy_scores)
coverage_margin = _coverage_then(margin_scores)
