"""Explainable active learning: the `xal-*` strategies (thesis 3.2.4, Table 3; docs/method.md).

Each cell of the labeled set L (a class-balanced sample of at most
`max_reference`) and of the pool U is represented in relevance space, L2-normalised:
`pixel` = its relevance map w.r.t. the two wavelet inputs, `concept` = the
relevance per channel at the output of the last residual block. The centres
are either the medoids of an average-linkage clustering of L into C clusters
(`clusters`, the thesis) or the per-class medoids of L (`classes`). A pool
cell's distances d_k to the C medoids replace the softmax outputs of the
classic uncertainty measures; the pure score functions below work on a
distance array alone.

Project options (`SelectionContext.options`): see OPTION_CHOICES and XalOptions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

import fastcluster
import numpy as np
from scipy.cluster.hierarchy import fcluster
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from .ranking import Ranking, SelectionContext, rank_by_scores
from .relevance import METHODS, RelevanceMaps, relevance_maps

REPRESENTATIONS = ("pixel", "concept")
CENTRES = ("clusters", "classes")
OPTION_CHOICES = {"relevance_method": METHODS, "representation": REPRESENTATIONS, "centres": CENTRES}
# Measured here: batch 32 fastest on CPU; 128 was slower and took ~2.4 GB.
RELEVANCE_BATCH_SIZE = 32
NEAREST_SHOWN = 3
TOP_CHANNELS = 5
# A clustering is degenerate when one cluster holds more than GIANT_SHARE of
# the reference set, or when more than half of the clusters are tiny: fewer
# than TINY_SHARE of the set, and singletons always count as tiny. Average
# linkage on raw maps tends to end in exactly that: one cluster plus singletons.
GIANT_SHARE = 0.8
TINY_SHARE = 0.02
_CHUNK = 1024  # rows per block of pairwise distances, so memory stays O(chunk x n)


@dataclass(frozen=True)
class XalOptions:
    relevance_method: str = "deeptaylor"
    representation: str = "concept"
    centres: str = "clusters"
    pca_dims: int = 50  # clustering runs on PCA-reduced vectors when they have more dimensions
    max_reference: int = 2000  # class-balanced cap on the labeled cells used as reference
    n_clusters: Optional[int] = None  # for "clusters"; None = the model's number of classes


def parse_options(options: dict) -> XalOptions:
    """Validate a project's strategy options; a ValueError names the bad option and what is allowed."""
    known = [f.name for f in fields(XalOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown xal option(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    for name, allowed in OPTION_CHOICES.items():
        if name in options and options[name] not in allowed:
            raise ValueError(f"xal option {name!r} is {options[name]!r}; allowed: {', '.join(allowed)}")
    minimum = {"pca_dims": 1, "max_reference": 2, "n_clusters": 2}
    for name, least in minimum.items():
        value = options.get(name)
        if value is None and name == "n_clusters":
            continue
        if name in options and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"xal option {name!r} is {value!r}; allowed: an integer >= {least}")
    return XalOptions(**options)


# --- score functions over (N, K) distances to K centres; higher = more informative ---


def _distance_shares(distances: np.ndarray) -> np.ndarray:
    """q_k = d_k / sum_j d_j; a cell at distance 0 from every centre gets uniform shares."""
    d = np.asarray(distances, dtype=np.float64)
    total = d.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, d / total, 1.0 / d.shape[1])


def xal_entropy_scores(distances: np.ndarray) -> np.ndarray:
    """Entropy of q = d / sum(d) in nats (thesis eq. 16): equidistant from all centres ranks first."""
    q = _distance_shares(distances)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)


def xal_margin_scores(distances: np.ndarray) -> np.ndarray:
    """-(d_(2) - d_(1)) / sum(d), d_(1) <= d_(2) the two smallest (thesis eq. 18).

    docs/method.md ranks by (d_(2) - d_(1)) / sum(d) ascending; its negation orders
    the same way with "higher = more informative"."""
    d = np.sort(np.asarray(distances, dtype=np.float64), axis=1)
    q = _distance_shares(d)
    return -(q[:, 1] - q[:, 0])


def xal_least_scores(distances: np.ndarray) -> np.ndarray:
    """min_k q_k: the nearest centre is relatively far (this project's reading of thesis eq. 17)."""
    return _distance_shares(distances).min(axis=1)


# --- reference set, representations, centres ---


def balanced_subset(labels: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `cap` items, as class-balanced as the counts allow.

    Classes take turns (in a random order within each class); a class that runs
    out leaves its turns to the others."""
    labels = np.asarray(labels)
    if len(labels) <= cap:
        return np.arange(len(labels))
    turn = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        turn[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((labels, turn))
    return np.sort(order[:cap])


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def representation_vectors(maps: RelevanceMaps, representation: str) -> np.ndarray:
    """(N, D) L2-normalised vectors: `pixel` = the flattened input map (2 x 56 x 56), `concept` = the 128 channels."""
    if representation == "pixel":
        assert maps.input_maps is not None, "pixel vectors need relevance maps computed with their input maps"
        return l2_normalise(maps.input_maps.reshape(len(maps.input_maps), -1))
    if representation == "concept":
        return l2_normalise(maps.concept)
    raise ValueError(f"unknown representation {representation!r}; expected one of {', '.join(REPRESENTATIONS)}")


def cluster_vectors(vectors: np.ndarray, n_clusters: int, pca_dims: int = 50) -> np.ndarray:
    """Average-linkage agglomerative clustering (Euclidean) into at most `n_clusters`; labels 0..K-1.

    Vectors with more than `pca_dims` dimensions are first reduced by PCA fitted
    on them. Fewer clusters than asked come back only where merge heights tie
    (e.g. duplicate vectors)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    if not 2 <= n_clusters <= n:
        raise ValueError(f"cannot cluster {n} vectors into {n_clusters} clusters")
    dims = min(pca_dims, n, vectors.shape[1])
    if vectors.shape[1] > dims:
        vectors = PCA(n_components=dims, random_state=0).fit_transform(vectors)
    tree = fastcluster.linkage(vectors, method="average", metric="euclidean")
    labels = fcluster(tree, n_clusters, criterion="maxclust")
    return np.unique(labels, return_inverse=True)[1]


def medoid(vectors: np.ndarray) -> int:
    """Index of the member with the least summed Euclidean distance to the others (ties: the lowest index)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    totals = np.concatenate([cdist(vectors[i : i + _CHUNK], vectors).sum(axis=1) for i in range(0, len(vectors), _CHUNK)])
    return int(np.argmin(totals))


def group_medoids(vectors: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group ids in ascending order, the index into `vectors` of each group's medoid)."""
    groups = np.asarray(groups)
    ids = np.unique(groups)
    medoids = []
    for group in ids:
        members = np.flatnonzero(groups == group)
        medoids.append(members[medoid(vectors[members])])
    return ids, np.asarray(medoids, dtype=np.int64)


def degeneracy(sizes: np.ndarray) -> Optional[str]:
    """Why a clustering with these cluster sizes is degenerate, or None (see GIANT_SHARE, TINY_SHARE)."""
    sizes = np.asarray(sizes)
    n = sizes.sum()
    if sizes.max() > GIANT_SHARE * n:
        return f"the largest cluster holds {sizes.max() / n:.0%} of the reference set (> {GIANT_SHARE:.0%})"
    tiny = int((sizes < max(2, TINY_SHARE * n)).sum())
    if tiny > len(sizes) / 2:
        return f"{tiny} of {len(sizes)} clusters hold fewer than {TINY_SHARE:.0%} of the reference set (or 1 cell)"
    return None


@dataclass
class Centres:
    """The C reference points the pool is measured against."""

    kind: str  # "clusters" or "classes"
    reference_medoids: np.ndarray  # (C,) index of each medoid into the reference vectors
    classes: np.ndarray  # (C,) the medoid's label
    sizes: np.ndarray  # (C,) members in the reference set
    majority_classes: np.ndarray  # (C,) the most frequent label among the members
    assignment: np.ndarray  # (n_reference,) centre of each reference cell (its cluster, or its class)
    ari: float  # clusters: clustering vs labels; classes: nearest-medoid assignment vs labels
    degenerate_reason: Optional[str]


def find_centres(vectors: np.ndarray, labels: np.ndarray, kind: str, n_clusters: int, pca_dims: int) -> Centres:
    labels = np.asarray(labels)
    if kind == "clusters":
        assignment = cluster_vectors(vectors, n_clusters, pca_dims)
        _, medoids = group_medoids(vectors, assignment)
        ari = adjusted_rand_score(labels, assignment)
    elif kind == "classes":
        class_ids, medoids = group_medoids(vectors, labels)
        assignment = np.searchsorted(class_ids, labels)
        ari = adjusted_rand_score(labels, class_ids[cdist(vectors, vectors[medoids]).argmin(axis=1)])
    else:
        raise ValueError(f"unknown centres {kind!r}; expected one of {', '.join(CENTRES)}")
    sizes = np.bincount(assignment, minlength=len(medoids))
    majority = np.array([np.bincount(labels[assignment == k]).argmax() for k in range(len(medoids))])
    return Centres(
        kind=kind,
        reference_medoids=medoids,
        classes=labels[medoids],
        sizes=sizes,
        majority_classes=majority,
        assignment=assignment,
        ari=float(ari),
        degenerate_reason=degeneracy(sizes) if kind == "clusters" else None,
    )


# --- the strategies ---


def cell_relevance(model, images: np.ndarray, options: XalOptions, device) -> RelevanceMaps:
    """Each cell's relevance as the strategies compare it: the input maps only for `pixel`."""
    return relevance_maps(
        model,
        images,
        options.relevance_method,
        device,
        batch_size=RELEVANCE_BATCH_SIZE,
        want_input_maps=options.representation == "pixel",
    )


def _top_channels(concept: np.ndarray) -> list[dict]:
    """The channels carrying most positive relevance, with their share of the cell's total |relevance|."""
    total = np.abs(concept).sum()
    top = np.argsort(-concept, kind="stable")[:TOP_CHANNELS]
    return [{"channel": int(c), "share": float(concept[c] / total) if total > 0 else 0.0} for c in top]


def xal_ranking(context: SelectionContext, strategy: str, score: Callable[[np.ndarray], np.ndarray]) -> Ranking:
    """Rank the pool by `score` over its distances to the centres of L in relevance space."""
    options = parse_options(context.options)
    labels = np.asarray(context.labeled_labels)
    n_clusters = options.n_clusters or context.model.n_classes
    n_reference = min(len(labels), options.max_reference)
    if options.centres == "clusters" and n_reference < n_clusters:
        raise ValueError(
            f"{strategy} needs at least {n_clusters} reference cells for {n_clusters} clusters; has {n_reference}"
        )
    if options.centres == "classes" and len(np.unique(labels)) < 2:
        raise ValueError(f"{strategy} with per-class centres needs labeled cells of at least 2 classes")
    reference = balanced_subset(labels, options.max_reference, context.rng)

    started = time.perf_counter()
    labeled_maps = cell_relevance(context.model, context.labeled_images[reference], options, context.device)
    if context.cached_pool_relevance is None:
        context.cached_pool_relevance = cell_relevance(context.model, context.pool_images, options, context.device)
    pool_maps = context.cached_pool_relevance
    relevance_s = time.perf_counter() - started

    started = time.perf_counter()
    reference_vectors = representation_vectors(labeled_maps, options.representation)
    pool_vectors = representation_vectors(pool_maps, options.representation)
    centres = find_centres(reference_vectors, labels[reference], options.centres, n_clusters, options.pca_dims)
    clustering_s = time.perf_counter() - started

    started = time.perf_counter()
    distances = cdist(pool_vectors, reference_vectors[centres.reference_medoids])
    scores = score(distances)
    distances_s = time.perf_counter() - started

    labeled_index = reference[centres.reference_medoids]
    centre_facts = [
        {"centre": k, "labeled_index": int(i), "class": int(c)}
        for k, (i, c) in enumerate(zip(labeled_index, centres.classes))
    ]
    details = []
    for i, row in enumerate(distances):
        detail = {
            "strategy": strategy,
            "representation": options.representation,
            "centres": options.centres,
            "relevance_method": options.relevance_method,
            "distances": [float(d) for d in row],
            "nearest": [
                {**centre_facts[k], "distance": float(row[k])} for k in np.argsort(row, kind="stable")[:NEAREST_SHOWN]
            ],
            "predicted": int(pool_maps.predicted[i]),
        }
        if options.representation == "concept":
            detail["top_channels"] = _top_channels(pool_maps.concept[i])
        details.append(detail)

    ranking = rank_by_scores(scores, details)
    ranking.summary = {
        "strategy": strategy,
        "representation": options.representation,
        "centres": options.centres,
        "relevance_method": options.relevance_method,
        "n_reference": len(reference),
        "n_centres": len(labeled_index),
        "cluster_sizes": centres.sizes.tolist(),
        "centre_medoids": [
            {**facts, "majority_class": int(majority)} for facts, majority in zip(centre_facts, centres.majority_classes)
        ],
        "degenerate": centres.degenerate_reason is not None,
        "degenerate_reason": centres.degenerate_reason,
        "ari": centres.ari,
        "timings": {"relevance_s": relevance_s, "clustering_s": clustering_s, "distances_s": distances_s},
    }
    return ranking


def _xal_strategy(name: str, score: Callable[[np.ndarray], np.ndarray]):
    def strategy(context: SelectionContext) -> Ranking:
        return xal_ranking(context, name, score)

    strategy.__name__ = name.replace("-", "_")
    strategy.__doc__ = score.__doc__
    return strategy


xal_entropy = _xal_strategy("xal-entropy", xal_entropy_scores)
xal_margin = _xal_strategy("xal-margin", xal_margin_scores)
xal_least = _xal_strategy("xal-least", xal_least_scores)
