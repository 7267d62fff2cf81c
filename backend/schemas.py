"""Pydantic schemas of the public REST API."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Channel = Literal["luminance", "red", "green", "blue"]
Split = Literal["pool", "test"]
ColdStart = Literal["random", "clusters"]


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ClassSpec(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    key: str | None = Field(default=None, description="keyboard shortcut, one character; default 1, 2, 3, ...")

    @field_validator("key")
    @classmethod
    def one_printable_character(cls, key: str | None) -> str | None:
        if key is not None and (len(key) != 1 or not key.isprintable() or key.isspace()):
            raise ValueError("a shortcut key is one printable, non-space character")
        return key


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_epochs: int = Field(default=20, ge=1, le=500)
    patience: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="stop a round's training after this many epochs without a better validation loss; "
        "null (the default): every epoch of the cosine schedule, the best one kept",
    )
    batch_size: int = Field(default=128, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    augment: bool = True
    seed: int = 0
    class_weighting: Literal["balanced", "none"] = Field(
        default="balanced", description="balanced: each class weighs alike in the loss, however many of it were labeled"
    )
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: bfloat16 autocast, ~2x faster training on CPUs with bf16 support and GPUs"
    )
    fine_tune_from: Literal["previous", "start"] = Field(
        default="previous",
        description="what each round trains from: the previous round's model (previous), or the start model "
        "again (start: the pool-pretrained model, or a fresh network when there is none)",
    )
    pool_pretraining_epochs: int | None = Field(
        default=None,
        ge=0,
        le=500,
        description="before round 0, pretrain the network on the pool without labels (contrastive) for this many "
        "epochs and start from it; 0: none; unset: the server's XAL_POOL_PRETRAINING_EPOCHS (20). "
        "Not run when the project has a start model",
    )


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    classes: list[ClassSpec] = Field(min_length=2, max_length=36)
    channel: Channel = "luminance"
    budget: int | None = Field(default=None, ge=1, description="B; default 20% of the pool")
    initial_size: int | None = Field(default=None, ge=1, description="k; default 15% of B")
    step_size: int | None = Field(default=None, ge=1, description="m; default 10% of B")
    # coverage-margin: ahead of random sampling in every seed at 2, 5 and 10% of the pool in the
    # real-scale experiment, and of coverage-entropy in every seed at 10% (README, bench/README.md)
    strategy: str = "coverage-margin"
    strategy_options: dict[str, Any] = Field(
        default_factory=dict, description="settings of the strategy, e.g. representation"
    )
    reveal_after_label: bool = False
    cold_start: ColdStart = Field(
        default="random", description="round 0: random cells, or spread evenly over the pool's clusters"
    )
    model_settings: ModelSettings = ModelSettings()
    start_model_id: int | None = None


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    budget: int | None = Field(default=None, ge=1)
    step_size: int | None = Field(default=None, ge=1)
    strategy: str | None = None
    strategy_options: dict[str, Any] | None = None
    reveal_after_label: bool | None = None
    cold_start: ColdStart | None = None
    model_settings: ModelSettings | None = None


class ClassOut(ORM):
    id: int
    name: str
    key: str
    position: int


class ProjectOut(ORM):
    id: int
    name: str
    description: str
    classes: list[ClassOut]
    channel: str
    budget: int | None
    initial_size: int | None
    step_size: int | None
    strategy: str
    strategy_options: dict[str, Any]
    reveal_after_label: bool
    cold_start: str
    model_settings: dict[str, Any]
    start_model_id: int | None
    state: str
    created_at: datetime


class ImageOut(ORM):
    id: int
    filename: str
    content_hash: str
    width: int
    height: int
    split: str
    has_mask: bool
    reference_class: str | None
    label: str | None
    meta: dict[str, Any]


class ImagePage(BaseModel):
    total: int
    items: list[ImageOut]


class ImportReportOut(BaseModel):
    imported: int
    image_ids: list[int]
    duplicates: list[str]
    invalid: list[dict[str, str]]


class SelectionOut(BaseModel):
    image_id: int
    filename: str
    round: int
    rank: int
    score: float
    details: dict[str, Any]
    status: Literal["queued", "leased", "labeled"]
    label: str | None = None
    lease_expires_at: datetime | None = None
    reserve: bool = Field(default=False, description="a next-ranked cell, served while the next round is computed")


class LeasedCell(BaseModel):
    image_id: int
    filename: str
    image_url: str
    round: int
    rank: int
    score: float
    details: dict[str, Any]
    lease_expires_at: datetime
    hints_hidden: bool = False
    reserve: bool = Field(default=False, description="a next-ranked cell, served while the next round is computed")


class NextCell(BaseModel):
    cell: LeasedCell | None
    message: str
    round_state: str | None


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: int
    class_name: str = Field(min_length=1)
    duration_ms: int | None = Field(default=None, ge=0, le=24 * 3600 * 1000)
    after_reveal: bool = Field(default=False, description="the answer given after the hints of a blind label were revealed")
    lease_next: bool = Field(
        default=False, description="also lease the caller's next cell and answer it as `next`: one request per cell"
    )


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: int
    reason: Literal["skip", "unsure"] = "skip"
    note: str = Field(default="", max_length=2000)


class LabelOut(ORM):
    id: int
    image_id: int
    class_name: str
    username: str
    round: int | None
    duration_ms: int | None
    created_at: datetime
    retracted_at: datetime | None
    superseded_at: datetime | None
    hints_seen: bool
    hints: dict[str, Any] | None = None  # the strategy's details, returned after a blind label
    next: NextCell | None = None  # the caller's next cell, after a label posted with lease_next


class RoundLabels(BaseModel):
    """The current labels of the cells a round picked, wherever in the queue they were given."""

    step: int = Field(description="labels of its step's cells (ranks below n_selected)")
    reserve: int = Field(description="labels of its reserve cells, given while the next round was computed")
    reserve_size: int = Field(description="reserve cells it picked")
    judged: int = Field(description="labeled picks the round's model had predicted a class for")
    wrong: int = Field(description="of those, how many the model had predicted otherwise than the label")
    training_labels: int | None = Field(
        default=None,
        description="while the round runs: the labels given before it started, which it trains on "
        "(n_labels once it is stored)",
    )


class RoundOut(ORM):
    number: int
    state: str
    model_version_id: int | None
    n_labels: int
    n_selected: int
    attempts: int
    progress: dict[str, Any]
    timings: dict[str, Any]
    metrics: dict[str, Any]
    selection_summary: dict[str, Any]
    diagnostics: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_empty_s: float | None = Field(
        default=None, description="seconds annotators found the queue empty while this round was computed"
    )
    labeled: RoundLabels | None = Field(
        default=None, description="the labels given to the cells this round picked (in GET rounds and GET rounds/{number})"
    )


class Progress(BaseModel):
    state: str
    pool_size: int
    test_size: int
    budget: int | None
    labeled: int
    budget_used: float | None
    step: dict[str, int] | None
    labels_per_class: dict[str, int]
    current_round: RoundOut | None
    rounds: list[dict[str, Any]]


class ModelVersionOut(ORM):
    id: int
    project_id: int | None
    parent_id: int | None
    name: str
    class_names: list[str]
    metrics: dict[str, Any]
    created_at: datetime


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=100)
    role: Literal["admin", "annotator", "client"]
    password: str | None = Field(default=None, min_length=8, max_length=200)


class UserOut(ORM):
    id: int
    username: str
    role: str
    created_at: datetime


class TokenOut(BaseModel):
    id: int
    token: str
    username: str
    role: str
    expires_at: datetime | None = None


class TokenInfo(ORM):
    """A token as listed: never its secret (only a hash of it is stored)."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=200)


class MemberOut(ORM):
    id: int
    username: str
    role: str
    added_at: datetime


class RelevanceMapOut(BaseModel):
    method: str
    model_version_id: int
    png_url: str
    npy_url: str


class ClusteringOut(ORM):
    id: int
    state: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    progress: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ClusterOut(BaseModel):
    cluster: int
    size: int
    example_image_ids: list[int]


class ClusterPoint(BaseModel):
    image_id: int
    x: float
    y: float
    cluster: int
    label: str | None = None  # the current label, or for admins the reference class, where known


class ClusteringOverview(BaseModel):
    clustering: ClusteringOut | None
    clusters: list[ClusterOut] = []
    points: list[ClusterPoint] = []
