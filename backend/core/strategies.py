"""The catalogue of selection strategies, without torch: each name, what it reads of every pool
cell, its options (a pydantic schema with defaults) and what it does, in words.

The API checks a project's strategy and options against it and serves it (`GET
/api/strategies`, which the dashboard reads); the implementations are worker.ml.strategies's
registry. tests/test_strategy_catalogue.py fails when the two disagree (names, needs, option
names and defaults)."""

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.core.errors import Invalid


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class XalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    relevance_method: Literal["deeptaylor", "lrp-epsilon", "gradient"] = Field(
        default="deeptaylor", description="how relevance maps are computed (zennit)"
    )
    representation: Literal["pixel", "concept"] = Field(
        default="concept", description="pixel: the input map (the thesis); concept: relevance per channel of the last block"
    )
    centres: Literal["clusters", "classes"] = Field(
        default="clusters", description="medoids of clusters of the labeled cells, or of each class"
    )
    pca_dims: int = Field(default=50, ge=1, description="the clustering runs on PCA-reduced vectors")
    max_reference: int = Field(default=2000, ge=2, description="class-balanced cap on the labeled cells compared with")
    n_clusters: int | None = Field(default=None, ge=2, description="clusters; default the number of classes")


class CoverageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    handover_accuracy: float = Field(
        default=0.85, ge=0, le=1, description="the model's validation accuracy from which uncertainty takes over"
    )
    candidates: int = Field(default=3, ge=1, description="uncertainty: the batch is spread over candidates x batch cells")
    neighbours: int = Field(default=20, ge=1, description="typicality: nearest neighbours within the cell's cluster")


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    needs: frozenset[str]  # what it reads of every pool cell: probabilities, relevance, embeddings
    options: type[BaseModel]
    description: str
    selectable: bool = True  # False: a cold start of the first batch, not a project's strategy


_SOFTMAX = frozenset({"probabilities"})
_XAL = frozenset({"probabilities", "relevance"})
CATALOGUE: dict[str, StrategyInfo] = {
    info.name: info
    for info in (
        StrategyInfo("random", frozenset(), NoOptions, "Cells drawn at random: the baseline."),
        StrategyInfo(
            "entropy",
            _SOFTMAX,
            NoOptions,
            "The cells whose predicted class probabilities are the most "
            "spread out (softmax entropy): where the model is least sure.",
        ),
        StrategyInfo("least_confidence", _SOFTMAX, NoOptions, "The cells whose most likely class is the least likely."),
        StrategyInfo("margin", _SOFTMAX, NoOptions, "The cells whose two most likely classes are the closest."),
        StrategyInfo(
            "xal-entropy",
            _XAL,
            XalOptions,
            "Explainable: cells whose relevance map is about equally far "
            "from every centre of the labeled cells' maps (entropy of the distance shares).",
        ),
        StrategyInfo(
            "xal-margin",
            _XAL,
            XalOptions,
            "Explainable: cells whose relevance map is about as far from its nearest centre as from the second nearest.",
        ),
        StrategyInfo(
            "xal-least", _XAL, XalOptions, "Explainable: cells whose relevance map is far even from its nearest centre."
        ),
        StrategyInfo(
            "coverage-entropy",
            frozenset({"probabilities", "embeddings"}),
            CoverageOptions,
            "Cold-start aware: while the model is weak, the most typical cell of each part of the pool no label "
            "covers yet; once it is good enough, the most uncertain cells, spread over the pool.",
        ),
        StrategyInfo(
            "coverage-margin",
            frozenset({"probabilities", "embeddings"}),
            CoverageOptions,
            "As coverage-entropy, but once the model is good enough the cells whose two most likely classes are "
            "the closest, spread over the pool.",
        ),
        StrategyInfo(
            "cluster-spread",
            frozenset({"clusters"}),
            NoOptions,
            "The cold start `clusters`: the first batch spread evenly over the clusters of the pool.",
            selectable=False,
        ),
    )
}


def check_strategy(name: str, options: dict) -> None:
    """Invalid (a 422) naming what is wrong with the strategy or its options."""
    info = CATALOGUE.get(name)
    if info is None or not info.selectable:
        known = ", ".join(sorted(n for n, i in CATALOGUE.items() if i.selectable))
        raise Invalid(f"unknown selection strategy {name!r}; known: {known}")
    if info.options is NoOptions and options:
        raise Invalid(f"strategy {name!r} takes no options; got {', '.join(map(repr, sorted(options)))}")
    try:
        info.options.model_validate(options)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors())
        raise Invalid(f"strategy {name!r}: {problems}") from None


def catalogue_json() -> list[dict]:
    return [
        {
            "name": info.name,
            "needs": sorted(info.needs),
            "description": info.description,
            "selectable": info.selectable,
            "options": info.options.model_json_schema(),
        }
        for info in CATALOGUE.values()
    ]
