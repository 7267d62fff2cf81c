"""What every selection strategy works with: the context it is given (the model, the labeled
set L, the pool U), the ranking it returns, and the uncertainty scores over softmax outputs
(thesis eq. 1-3), which are pure functions of a probability array."""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional

import numpy as np
import torch

from .relevance import RelevanceMaps
from .training import model_outputs


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
    # from chunks); otherwise filled on first use (pool_probabilities(); the xal strategies' relevance).
    cached_pool_probabilities: Optional[np.ndarray] = field(default=None, repr=False)
    cached_pool_relevance: Optional[RelevanceMaps] = field(default=None, repr=False)
    cached_pool_embeddings: Optional[np.ndarray] = field(default=None, repr=False)
    pool_clusters: Optional[np.ndarray] = None  # each pool cell's cluster, for the cold start `clusters`
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
                self.model, self.pool_images, self.device, self.batch_size, self.precision
            )
        return self.cached_pool_probabilities

    def pool_embeddings(self) -> np.ndarray:
        """(N_U, 128) features of the model's trunk on the pool, computed once."""
        if self.cached_pool_embeddings is None:
            self.pool_probabilities()
        assert self.cached_pool_embeddings is not None, "pool probabilities were given without the pool's embeddings"
        return self.cached_pool_embeddings

    def labeled_embeddings(self) -> np.ndarray:
        return model_outputs(self.model, self.labeled_images, self.device, self.batch_size, self.precision)[1]


@dataclass
class Ranking:
    """The pool, most informative first."""

    order: np.ndarray  # pool indices
    scores: np.ndarray  # aligned with order; higher = more informative
    details: list[dict]  # aligned with order; JSON-serialisable, shown by the UI/API
    summary: dict = field(default_factory=dict)  # about the whole ranking (e.g. clusters), kept with the round


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
