"""Selection strategies: which pool cells are worth an expert's time.

A strategy (`Strategy`) is registered by name in STRATEGIES: how it ranks the pool (a
function `SelectionContext -> Ranking`), what it reads of every pool cell (`needs`), and how it
checks a project's options. Adding one is one function plus one registry entry, and its line in
the torch-free catalogue (backend.core.strategies; a test keeps the two equal). The softmax
strategies (thesis eq. 1-3) are built from plain score functions over a probability array, so
they can be tested and reused on arrays alone. The cold start `cluster-spread` is a strategy
too, of the first batch only.

What a ranking needs to know of each pool cell (`PoolOutputs`: its softmax outputs and,
for the xal-* strategies, its relevance) is independent per cell, so a large pool can be
computed in chunks (`pool_chunks`) by separate workers and concatenated in pool order
before the ranking, which runs once.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .chunking import batch_aligned_chunks
from .coverage import coverage_entropy, coverage_margin, parse_options as parse_coverage_options
from .ranking import (  # noqa: F401 - part of this module's interface
    Ranking,
    SelectionContext,
    entropy_scores,
    least_confidence_scores,
    margin_scores,
    rank_by_scores,
)
from .relevance import RelevanceMaps
from .training import model_outputs
from .xal import RELEVANCE_BATCH_SIZE, cell_relevance, parse_options as parse_xal_options, xal_entropy, xal_least, xal_margin


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
            relevance = RelevanceMaps(
                input_maps=arrays["input_maps"] if "input_maps" in arrays else None,
                **{name: arrays[name] for name in RELEVANCE_ARRAYS},
            )
        return cls(
            probabilities=arrays["probabilities"],
            relevance=relevance,
            embeddings=arrays["embeddings"] if "embeddings" in arrays else None,
        )


RELEVANCE_ARRAYS = ("concept", "logits", "predicted", "target")


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def compute_pool_outputs(
    model,
    images: np.ndarray,
    strategy: str,
    options: dict,
    device: torch.device,
    batch_size: int = 128,
    precision: str = "fp32",
) -> Optional[PoolOutputs]:
    """The per-cell work of ranking `images` (the pool, or a chunk of it) with `strategy`; None for
    a strategy that reads nothing of the pool's cells (random). The xal-* strategies take the
    softmax outputs from the logits of their relevance pass, not from a second forward pass."""
    reads = needs(strategy) - {"clusters"}
    if not reads:
        return None
    if "relevance" in reads:
        relevance = cell_relevance(model, images, parse_xal_options(options), device)
        return PoolOutputs(probabilities=_softmax(relevance.logits), relevance=relevance)
    probabilities, embeddings = model_outputs(model, images, device, batch_size, precision)
    return PoolOutputs(probabilities=probabilities, embeddings=embeddings if "embeddings" in reads else None)


def concatenate_pool_outputs(chunks: list[PoolOutputs]) -> PoolOutputs:
    """The outputs of consecutive chunks of the pool, in order, as one PoolOutputs."""
    arrays = [chunk.arrays() for chunk in chunks]
    return PoolOutputs.from_arrays({name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]})


def pool_chunks(pool_size: int, chunk_size: int, batch_size: int) -> list[tuple[int, int]]:
    """The chunks of a pool to score: on the scoring batches and the relevance batches."""
    return batch_aligned_chunks(pool_size, chunk_size, batch_size, RELEVANCE_BATCH_SIZE)


def _no_options(options: dict) -> None:
    if options:
        raise ValueError(f"this strategy takes no options; got {', '.join(map(repr, sorted(options)))}")


@dataclass(frozen=True)
class Strategy:
    rank: Callable[[SelectionContext], Ranking]
    # what it reads of every pool cell: "probabilities", "relevance", "embeddings" (compute_pool_outputs
    # computes just that); "clusters": the pool's clustering (SelectionContext.pool_clusters)
    needs: frozenset[str] = frozenset()
    parse_options: Callable[[dict], object] = _no_options  # raises a ValueError saying what is wrong
    first_batch_only: bool = False  # a cold start, not a project's strategy


class UnknownStrategy(ValueError, KeyError):
    """Raised for a strategy name that is not registered (catchable as either)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _softmax_details(probabilities: np.ndarray) -> list[dict]:
    return [{"probabilities": [float(v) for v in row], "predicted": int(row.argmax())} for row in probabilities]


def _softmax_strategy(score: Callable[[np.ndarray], np.ndarray]) -> Strategy:
    def rank(context: SelectionContext) -> Ranking:
        probabilities = context.pool_probabilities()
        return rank_by_scores(score(probabilities), _softmax_details(probabilities))

    rank.__name__ = score.__name__.removesuffix("_scores")
    rank.__doc__ = score.__doc__
    return Strategy(rank, frozenset({"probabilities"}))


def random_ranking(context: SelectionContext) -> Ranking:
    """A uniform random order drawn from context.rng; the score is the draw."""
    return rank_by_scores(context.rng.random(context.pool_size))


def cluster_spread(context: SelectionContext) -> Ranking:
    """The cold start `clusters`: cluster_spread_ranking over the pool's clustering."""
    if context.pool_clusters is None:
        raise ValueError("cluster-spread needs the pool's clusters")
    return cluster_spread_ranking(np.asarray(context.pool_clusters), context.rng)


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


_XAL = frozenset({"probabilities", "relevance"})
STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(random_ranking),
    "entropy": _softmax_strategy(entropy_scores),
    "least_confidence": _softmax_strategy(least_confidence_scores),
    "margin": _softmax_strategy(margin_scores),
    "xal-entropy": Strategy(xal_entropy, _XAL, parse_xal_options),
    "xal-margin": Strategy(xal_margin, _XAL, parse_xal_options),
    "xal-least": Strategy(xal_least, _XAL, parse_xal_options),
    "coverage-entropy": Strategy(coverage_entropy, frozenset({"probabilities", "embeddings"}), parse_coverage_options),
    "coverage-margin": Strategy(coverage_margin, frozenset({"probabilities", "embeddings"}), parse_coverage_options),
    "cluster-spread": Strategy(cluster_spread, frozenset({"clusters"}), first_batch_only=True),
}


def needs(name: str) -> frozenset[str]:
    """What the strategy `name` reads of every pool cell (nothing for an unknown name)."""
    strategy = STRATEGIES.get(name)
    return strategy.needs if strategy is not None else frozenset()


def check_options(name: str, options: dict) -> None:
    if name not in STRATEGIES:
        raise UnknownStrategy(f"unknown selection strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    STRATEGIES[name].parse_options(options)


def rank_pool(name: str, context: SelectionContext) -> Ranking:
    """Rank the pool with the strategy registered as `name`."""
    try:
        strategy = STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(f"unknown selection strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
    ranking = strategy.rank(context)
    n = context.pool_size
    if not (len(ranking.order) == len(ranking.scores) == len(ranking.details) == n) or not np.array_equal(
        np.sort(ranking.order), np.arange(n)
    ):
        raise RuntimeError(f"strategy {name!r} did not rank each of the {n} pool items exactly once")
    return ranking
