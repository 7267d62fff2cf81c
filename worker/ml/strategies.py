"""Selection strategies: which pool cells are worth an expert's time.

A strategy is a function `SelectionContext -> Ranking`, registered by name in
STRATEGIES. Adding one is one function plus one registry line. The softmax
strategies (thesis eq. 1-3) are built from plain score functions over a
probability array, so they can be tested and reused on arrays alone.

What a ranking needs to know of each pool cell (`PoolOutputs`: its softmax outputs and,
for the xal-* strategies, its relevance) is independent per cell, so a large pool can be
computed in chunks (`pool_chunks`) by separate workers and concatenated in pool order
before the ranking, which runs once.
"""
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional

import numpy as np
import torch

from .chunking import batch_aligned_chunks
from .coverage import coverage_entropy, parse_options as parse_coverage_options
from .relevance import RelevanceMaps
from .training import model_outputs
from .xal import RELEVANCE_BATCH_SIZE, cell_relevance, parse_options as parse_xal_options, xal_entropy, xal_least, xal_margin


@dataclass
class SelectionContext:
    """Everything a strategy may look at: the model, the labeled set L and the pool U.

    The pool's cells are loaded on first use (`pool_images`), so a strategy that needs
    only the pool's size (random, e.g. the first batch before any model) loads nothing."""

    model: Any  # a ParallelResidualNet; Any so that array-only strategies can be tested without one
    device: torch.device
    labeled_images: np.ndarray  # (N_L, 112, 112) float32
    labeled_labels: np.ndarray  # (N_L,) int
    pool_size: int
    load_pool_images: Callable[[], np.ndarray]  # -> (N_U, 112, 112) float32, called at most once
    rng: np.random.Generator
    batch_size: int = 128
    options: dict = field(default_factory=dict)  # the project's settings for its strategy
    # Softmax outputs and relevance on the pool, if already computed elsewhere (e.g. merged
    # from chunks); otherwise filled on first use by pool_probabilities() / pool_relevance().
    cached_pool_probabilities: Optional[np.ndarray] = field(default=None, repr=False)
    cached_pool_relevance: Optional[RelevanceMaps] = field(default=None, repr=False)
    cached_pool_embeddings: Optional[np.ndarray] = field(default=None, repr=False)
    batch_cells: int = 1  # cells this round queues (its step), for strategies that pick a batch as a whole
    model_accuracy: Optional[float] = None  # the trained model's accuracy on its validation cells; None before any
    precision: str = "fp32"

    @cached_property
    def pool_images(self) -> np.ndarray:
        images = self.load_pool_images()
        if len(images) != self.pool_size:
            raise ValueError(f"the pool loader gave {len(images)} cells for a pool of {self.pool_size}")
        return images

    def pool_probabilities(self) -> np.ndarray:
        """(N_U, C) softmax outputs of the model on the pool, computed once."""
        if self.cached_pool_probabilities is None:
            self.cached_pool_probabilities, self.cached_pool_embeddings = model_outputs(
                self.model, self.pool_images, self.device, self.batch_size, self.precision)
        return self.cached_pool_probabilities

    def pool_embeddings(self) -> np.ndarray:
        """(N_U, 128) features of the model's trunk on the pool, computed once."""
        if self.cached_pool_embeddings is None:
            self.pool_probabilities()
        return self.cached_pool_embeddings

    def labeled_embeddings(self) -> np.ndarray:
        return model_outputs(self.model, self.labeled_images, self.device, self.batch_size, self.precision)[1]

    def pool_relevance(self) -> RelevanceMaps:
        """The pool's relevance as the project's xal options ask for it, computed once."""
        if self.cached_pool_relevance is None:
            self.cached_pool_relevance = cell_relevance(self.model, self.pool_images, parse_xal_options(self.options), self.device)
        return self.cached_pool_relevance


@dataclass
class PoolOutputs:
    """What the model says about each pool cell, in pool order: the per-cell part of a ranking."""

    probabilities: np.ndarray  # (N, C) softmax outputs
    relevance: Optional[RelevanceMaps] = None  # the xal-* strategies' relevance of each cell
    embeddings: Optional[np.ndarray] = None  # (N, 128) trunk features, for the strategies that need them

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat named arrays (a chunk file); `from_arrays` reads them back."""
        arrays = {"probabilities": self.probabilities}
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings
        if self.relevance is not None:
            arrays.update({name: getattr(self.relevance, name) for name in RELEVANCE_ARRAYS})
            if self.relevance.input_maps is not None:
                arrays["input_maps"] = self.relevance.input_maps
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "PoolOutputs":
        relevance = None
        if "concept" in arrays:
            relevance = RelevanceMaps(input_maps=arrays["input_maps"] if "input_maps" in arrays else None,
                                      **{name: arrays[name] for name in RELEVANCE_ARRAYS})
        return cls(probabilities=arrays["probabilities"], relevance=relevance,
                   embeddings=arrays["embeddings"] if "embeddings" in arrays else None)


RELEVANCE_ARRAYS = ("concept", "logits", "predicted", "target")


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def compute_pool_outputs(model, images: np.ndarray, strategy: str, options: dict, device: torch.device,
                         batch_size: int = 128, precision: str = "fp32") -> Optional[PoolOutputs]:
    """The per-cell work of ranking `images` (the pool, or a chunk of it) with `strategy`; None for
    a strategy that reads nothing of the pool's cells (random). The xal-* strategies take the
    softmax outputs from the logits of their relevance pass, not from a second forward pass."""
    needs = NEEDS[strategy]
    if not needs:
        return None
    if "relevance" in needs:
        relevance = cell_relevance(model, images, parse_xal_options(options), device)
        return PoolOutputs(probabilities=_softmax(relevance.logits), relevance=relevance)
    probabilities, embeddings = model_outputs(model, images, device, batch_size, precision)
    return PoolOutputs(probabilities=probabilities, embeddings=embeddings if "embeddings" in needs else None)


def concatenate_pool_outputs(chunks: list[PoolOutputs]) -> PoolOutputs:
    """The outputs of consecutive chunks of the pool, in order, as one PoolOutputs."""
    arrays = [chunk.arrays() for chunk in chunks]
    return PoolOutputs.from_arrays({name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]})


def pool_chunks(pool_size: int, chunk_size: int, batch_size: int) -> list[tuple[int, int]]:
    """The chunks of a pool to score: on the scoring batches and the relevance batches."""
    return batch_aligned_chunks(pool_size, chunk_size, batch_size, RELEVANCE_BATCH_SIZE)


@dataclass
class Ranking:
    """The pool, most informative first."""

    order: np.ndarray  # pool indices
    scores: np.ndarray  # aligned with order; higher = more informative
    details: list[dict]  # aligned with order; JSON-serialisable, shown by the UI/API
    summary: dict = field(default_factory=dict)  # about the whole ranking (e.g. clusters), kept with the round


Strategy = Callable[[SelectionContext], Ranking]


class UnknownStrategy(ValueError, KeyError):
    """Raised for a strategy name that is not registered (catchable as either)."""

    def __str__(self) -> str:
        return str(self.args[0])


def rank_by_scores(scores: np.ndarray, details: Optional[list[dict]] = None) -> Ranking:
    """Order pool indices by score, highest first; ties go to the lower pool index."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))
    if details is None:
        details = [{} for _ in scores]
    return Ranking(order=order, scores=scores[order], details=[details[i] for i in order])


# --- score functions over (N, C) softmax outputs; higher = more informative ---

def entropy_scores(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats, -sum_c p_c log p_c (thesis eq. 3); 0 log 0 = 0."""
    p = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def least_confidence_scores(probabilities: np.ndarray) -> np.ndarray:
    """1 - max_c p_c (thesis eq. 1)."""
    return 1.0 - np.asarray(probabilities, dtype=np.float64).max(axis=1)


def margin_scores(probabilities: np.ndarray) -> np.ndarray:
    """1 - (p_(1) - p_(2)) with p_(1) >= p_(2) the two largest (thesis eq. 2).

    The thesis ranks by the margin ascending; 1 - margin orders the same way
    with "higher = more informative", like every other score.
    """
    p = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2])


def _softmax_details(probabilities: np.ndarray) -> list[dict]:
    return [{"probabilities": [float(v) for v in row], "predicted": int(row.argmax())} for row in probabilities]


def _softmax_strategy(score: Callable[[np.ndarray], np.ndarray]) -> Strategy:
    def strategy(context: SelectionContext) -> Ranking:
        probabilities = context.pool_probabilities()
        return rank_by_scores(score(probabilities), _softmax_details(probabilities))

    strategy.__name__ = score.__name__.removesuffix("_scores")
    strategy.__doc__ = score.__doc__
    return strategy


def random_ranking(context: SelectionContext) -> Ranking:
    """A uniform random order drawn from context.rng; the score is the draw."""
    return rank_by_scores(context.rng.random(context.pool_size))


def cluster_spread_ranking(clusters: np.ndarray, rng: np.random.Generator) -> Ranking:
    """A cold start spread evenly over a clustering of the pool: round-robin over the
    clusters in a random order, a random not-yet-picked cell from each, until the pool is
    exhausted. `clusters` is each pool cell's cluster; the scores fall with the pick order."""
    clusters = np.asarray(clusters, dtype=np.int64)
    members = {int(c): list(rng.permutation(np.flatnonzero(clusters == c))) for c in rng.permutation(np.unique(clusters))}
    order: list[int] = []
    while members:
        for cluster in list(members):
            order.append(int(members[cluster].pop()))
            if not members[cluster]:
                del members[cluster]
    order_array = np.array(order, dtype=np.int64)
    return Ranking(
        order=order_array,
        scores=np.linspace(1.0, 0.0, len(order)) if order else np.zeros(0),
        details=[{"strategy": "cluster-spread", "cluster": int(clusters[i])} for i in order_array],
    )


STRATEGIES: dict[str, Strategy] = {
    "random": random_ranking,
    "entropy": _softmax_strategy(entropy_scores),
    "least_confidence": _softmax_strategy(least_confidence_scores),
    "margin": _softmax_strategy(margin_scores),
    "xal-entropy": xal_entropy,
    "xal-margin": xal_margin,
    "xal-least": xal_least,
    "coverage-entropy": coverage_entropy,
}

# What each strategy reads of every pool cell (compute_pool_outputs computes just that).
NEEDS: dict[str, frozenset[str]] = {
    "random": frozenset(),
    **{name: frozenset({"probabilities"}) for name in ("entropy", "least_confidence", "margin")},
    **{name: frozenset({"probabilities", "relevance"}) for name in ("xal-entropy", "xal-margin", "xal-least")},
    "coverage-entropy": frozenset({"probabilities", "embeddings"}),
}


def _no_options(options: dict) -> None:
    if options:
        raise ValueError(f"this strategy takes no options; got {', '.join(map(repr, sorted(options)))}")


# How each strategy checks a project's options (a ValueError says what is wrong).
OPTION_PARSERS: dict[str, Callable[[dict], object]] = {
    **{name: parse_xal_options if "relevance" in NEEDS[name] else _no_options for name in STRATEGIES},
    "coverage-entropy": parse_coverage_options,
}


def check_options(name: str, options: dict) -> None:
    if name not in STRATEGIES:
        raise UnknownStrategy(f"unknown selection strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    OPTION_PARSERS[name](options)


def rank_pool(name: str, context: SelectionContext) -> Ranking:
    """Rank the pool with the strategy registered as `name`."""
    try:
        strategy = STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(f"unknown selection strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
    ranking = strategy(context)
    n = context.pool_size
    if not (len(ranking.order) == len(ranking.scores) == len(ranking.details) == n) or not np.array_equal(
        np.sort(ranking.order), np.arange(n)
    ):
        raise RuntimeError(f"strategy {name!r} did not rank each of the {n} pool items exactly once")
    return ranking
