"""What the API and the workers agree on about a long job (a round, a pool clustering): its
states, the names of the Celery tasks that compute it, and a clustering's settings."""

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    WAITING = "waiting"  # a round 0 waiting for the pool's pretraining (backend.services.rounds.start_project)
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobState.WAITING, JobState.QUEUED, JobState.RUNNING)


class Task(StrEnum):
    RUN_ROUND = "xal.run_round"
    CLUSTER_POOL = "xal.cluster_pool"
    SCORE_CHUNK = "xal.score_chunk"
    ENCODE_CHUNK = "xal.encode_chunk"


class ClusteringConfig(BaseModel):
    """A clustering of the pool without labels; n_clusters defaults to the number of classes.

    `contrastive`: the parallel networks pretrained on the pool (worker.ml.pretext), k-means on
    their features; the pretrained network becomes the project's start model. `autoencoder`: the
    thesis's deep clustering (worker.ml.deep_clustering)."""

    model_config = ConfigDict(extra="forbid")
    representation: Literal["contrastive", "autoencoder"] = "contrastive"
    pretext_epochs: int = Field(default=20, ge=1, le=500, description="contrastive: epochs of pretraining")
    start_model: bool = Field(
        default=True,
        description="contrastive: the pretrained network becomes the project's start "
        "model (new head, early layers frozen) if no round has trained a model yet",
    )
    case: Literal[1, 2, 3] = Field(
        default=1, description="autoencoder: 1 plain, 2 unpooling + skips, 3 case 2 + extra streams"
    )
    pretrain_epochs: int = Field(default=3, ge=0, le=200, description="autoencoder")
    cluster_epochs: int = Field(default=2, ge=0, le=200, description="autoencoder")
    n_clusters: int | None = Field(default=None, ge=2, le=100)
    max_cells: int = Field(default=2000, ge=2, le=100_000, description="cells trained on; every pool cell is assigned")
    standardise: bool = Field(
        default=True,
        description="autoencoder: each cell to zero mean and unit variance first, "
        "so that a cell's brightness does not dominate the latent",
    )
