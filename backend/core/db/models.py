"""Typed SQLAlchemy 2 models. Alembic (migrations/) owns the schema; these mirror it."""

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from backend.core.jobs import JobState

MAX_ID = 2**31 - 1  # the database's integer keys: an id beyond them names no row


def utcnow() -> datetime:
    """Naive UTC: stored and compared the same way on PostgreSQL and SQLite."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)  # NFKC, as written (backend.core.names)
    username_key: Mapped[str] = mapped_column(String(100), unique=True)  # case-folded: Admin and admin are one name
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # admin | annotator | client
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # None: until revoked
    user: Mapped[User] = relationship()


class LoginAttempt(Base):
    """Every password sign-in, kept for the rate limit's window; in the database so that
    every API process counts the same attempts."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_username_created_at", "username", "created_at"),
        Index("ix_login_attempts_client_ip_created_at", "client_ip", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100))  # its name_key; unknown names are counted too
    client_ip: Mapped[str] = mapped_column(String(64))
    succeeded: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    name: Mapped[str] = mapped_column(String(200), default="")
    checkpoint_key: Mapped[str] = mapped_column(String(64))  # blob holding the checkpoint
    class_names: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training: Mapped[dict[str, Any]] = mapped_column(default=dict)  # history, epochs, seconds, n_labels
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str] = mapped_column(String(20), default="luminance")
    # budget B, initial batch k and step m; None = the defaults (20% of the pool, 15% and 10% of B)
    budget: Mapped[int | None]
    initial_size: Mapped[int | None]
    step_size: Mapped[int | None]
    strategy: Mapped[str] = mapped_column(String(50), default="random")
    strategy_options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. representation, centres
    model_settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    start_model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", use_alter=True))
    # "label first, then reveal": hints stay hidden until the annotator's blind label is in
    reveal_after_label: Mapped[bool] = mapped_column(default=False)
    # how round 0 picks its k cells: "random", or "clusters" (evenly over the latest pool clustering)
    cold_start: Mapped[str] = mapped_column(String(20), default="random")
    state: Mapped[str] = mapped_column(String(20), default="draft")  # draft | active | finished
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    classes: Mapped[list["ProjectClass"]] = relationship(
        order_by="ProjectClass.position", cascade="all, delete-orphan", lazy="selectin"
    )


class ProjectMember(Base):
    """An annotator or client who may see and work on a project (admins see every project)."""

    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProjectClass(Base):
    __tablename__ = "project_classes"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        UniqueConstraint("project_id", "key"),
        UniqueConstraint("project_id", "position"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(1))  # keyboard shortcut
    position: Mapped[int]  # display order, also the network's output index


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the file = its blob key
    filename: Mapped[str] = mapped_column(String(500))
    mask_key: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    split: Mapped[str] = mapped_column(String(10), default="pool")  # pool | test
    # A class known at import (required for the test split). Never shown to annotators
    # nor used for training: it scores rounds and lets `simulate` act as the oracle.
    reference_class_id: Mapped[int | None] = mapped_column(ForeignKey("project_classes.id"))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)  # specimen, intensity, ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Round(Base):
    """Round 0 picks the first k cells; round n >= 1 fine-tunes on every label so far,
    evaluates on the test split and picks the next m cells (none once the budget is spent)."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("project_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    state: Mapped[str] = mapped_column(String(20), default=JobState.QUEUED)  # queued | running | done | failed | cancelled
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    n_labels: Mapped[int] = mapped_column(default=0)  # size of the training set
    n_selected: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    # cells of the step without a label: each first label in the step takes one off, an undo
    # gives it back; the label that takes it to 0 opens the next round (in one UPDATE of this
    # row, which serialises a step's last labels)
    open_cells: Mapped[int] = mapped_column(default=0, server_default="0")
    # Until when someone holds the round: its message in the broker while queued, its worker
    # (renewing it) while running. Once past, or never set (the broker was down), the API's
    # sweeper queues the round again and re-sends it (backend.core.outbox).
    lease_expires_at: Mapped[datetime | None]
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)  # phase, done, total
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # seconds per phase
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)  # on the test split
    # what the strategy said about its whole ranking (clusters, pool's expected error, ...)
    selection_summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # filled once this round's batch is labeled: how many of its cells the model had wrong
    diagnostics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # when an annotator first found the queue empty while this round was computed
    queue_empty_since: Mapped[datetime | None]

    @property
    def queue_empty_s(self) -> float | None:
        """How long annotators had nothing to label while this round was computed (so far)."""
        if self.queue_empty_since is None:
            return None
        return max(0.0, ((self.finished_at or utcnow()) - self.queue_empty_since).total_seconds())


class Selection(Base):
    """A cell a round picked; the open round's selections are the annotators' queue. Ranks
    below the round's n_selected are its step; the rest are its reserve, served only while
    the next round is computed."""

    __tablename__ = "selections"
    __table_args__ = (
        UniqueConstraint("round_id", "image_id"),
        UniqueConstraint("round_id", "rank"),
        Index(
            "ix_selections_unlabeled_round_rank",
            "round_id",
            "rank",
            postgresql_where=text("NOT labeled"),
            sqlite_where=text("NOT labeled"),
        ),
        # the caller's held cell: their leases in the round (migration 0013 says why not leased_by_id alone)
        Index("ix_selections_leased_by_id_round_id", "leased_by_id", "round_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    # no index of its own: the unique constraints above begin with it (migration 0014)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int]
    score: Mapped[float]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # whether the cell has a current label; a copy of what `labels` says, written in the same
    # transaction as the label, that the queue's queries can read from one index
    labeled: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    leased_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    leased_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    image: Mapped[Image] = relationship(lazy="joined")


class Label(Base):
    """Labels are never deleted: an undo sets retracted_at, a relabel sets superseded_at.
    At most one current label per image (partial unique index)."""

    __tablename__ = "labels"
    __table_args__ = (
        Index(
            "uq_labels_current_per_image",
            "image_id",
            unique=True,
            postgresql_where=text("retracted_at IS NULL AND superseded_at IS NULL"),
            sqlite_where=text("retracted_at IS NULL AND superseded_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("project_classes.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))  # the round that queued the cell
    duration_ms: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retracted_at: Mapped[datetime | None]
    superseded_at: Mapped[datetime | None]
    # False for a blind label of a "label first, then reveal" project
    hints_seen: Mapped[bool] = mapped_column(default=True)
    round: Mapped["Round | None"] = relationship()


class CellNote(Base):
    """An annotator's skip or "unsure": the cell went back to the queue with this note."""

    __tablename__ = "cell_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(10))  # skip | unsure
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RelevanceMap(Base):
    """A cell's relevance map under one model: a rendered PNG and the raw array (npy)."""

    __tablename__ = "relevance_maps"
    __table_args__ = (UniqueConstraint("image_id", "model_version_id", "method"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(20))
    png_key: Mapped[str] = mapped_column(String(64))
    npy_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PoolClustering(Base):
    """A deep clustering of a project's pool (worker.clustering): its config, progress and
    scores; each pool cell's cluster and 2-D PCA coordinates are its ImageCluster rows."""

    __tablename__ = "pool_clusterings"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(20), default=JobState.QUEUED)  # queued | running | done | failed
    attempts: Mapped[int] = mapped_column(default=0)
    lease_expires_at: Mapped[datetime | None]  # as a round's (backend.core.outbox)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # case, epochs, n_clusters, max_cells
    # sizes, recon_mse, and acc/nmi/ari against the reference classes where the pool has them
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)  # phase, epoch, epochs
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ImageCluster(Base):
    """A pool cell's cluster under one clustering, and its latent's 2-D PCA coordinates."""

    __tablename__ = "image_clusters"
    clustering_id: Mapped[int] = mapped_column(ForeignKey("pool_clusterings.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    cluster: Mapped[int]
    x: Mapped[float]
    y: Mapped[float]
