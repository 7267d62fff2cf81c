"""One round of the budget loop, as a worker runs it: gather the inputs from the database,
call worker.ml, write the results back in one transaction.

Idempotent: a round that is done or cancelled is left alone, and results are written only
while the round row is locked and still running, so a duplicated or redelivered message
never creates a second set of selections or a second model version."""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timezone
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import exists, func, select

from backend.core.blobs import get_blob_store
from backend.core.db.models import (
    Image,
    ImageCluster,
    Label,
    ModelVersion,
    PoolClustering,
    Project,
    RelevanceMap,
    Round,
    Selection,
    utcnow,
)
from backend.core.db.session import new_session
from backend.core.jobs import JobState
from backend.core.queries import current_label_exists, is_current, mark_labeled_cells
from backend.core.settings import get_settings

log = logging.getLogger(__name__)

Parent = TypeVar("Parent")  # a model version, or (the simulator) a checkpoint key


@lru_cache(maxsize=20_000)
def _cell(content_hash: str, channel: str) -> np.ndarray:
    from backend.core.images import load_cell

    return load_cell(get_blob_store().get(content_hash), channel)


def load_cells(content_hashes: list[str], channel: str) -> np.ndarray:
    from backend.core.images import INPUT_SIZE

    if not content_hashes:
        return np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.float32)
    return np.stack([_cell(h, channel) for h in content_hashes])


@dataclass
class RoundResult:
    """What compute_round gives back, for store_round (or the simulator) to keep."""

    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    metrics: dict = field(default_factory=dict)  # on the test split (worker.ml.metrics.classification_metrics)
    checkpoint: bytes | None = None  # the trained model; None in round 0
    training: dict | None = None  # epochs, best epoch, history, val_acc
    selected: list[tuple[int, float, dict]] = field(default_factory=list)  # (image id, score, details), rank order
    summary: dict = field(default_factory=dict)  # about the whole ranking
    pool_predicted: np.ndarray | None = None  # the model's class for each pool cell, where it read them all
    maps: list[tuple] = field(default_factory=list)  # (image id, method, png, npy) of the queued cells


@dataclass
class RoundInputs:
    project_id: int
    number: int
    channel: str
    class_names: list[str]
    strategy: str
    strategy_options: dict
    model_settings: dict
    batch_size: int  # cells this round queues: its step
    parent_model_id: int | None
    parent_checkpoint: str | None
    transfer: bool  # parent is a start model from elsewhere: new head, frozen early layers
    labeled_ids: list[int]
    labeled_hashes: list[str]
    labeled_classes: np.ndarray
    pool_ids: list[int]
    pool_hashes: list[str]
    test_hashes: list[str]
    test_classes: np.ndarray
    render_maps: bool = True  # the simulator has no one to show them to
    # round 0 of a `cold_start = clusters` project: each pool cell's cluster (aligned with
    # pool_ids), so that the first k cells are spread evenly over the clusters
    pool_clusters: list[int] | None = None
    cold_start_note: str | None = None  # why a requested cold start fell back to random
    # the next-ranked cells queued beyond the step, served while the next round is computed;
    # None: no reserve (the simulator)
    reserve: "ReservePlan | None" = None
    # fixed cells to stop the training on and choose its checkpoint by (the simulator's
    # validation set); empty: a stratified holdout of the labels
    validation_hashes: list[str] = field(default_factory=list)
    validation_classes: np.ndarray | None = None


FINE_TUNE_FROM = ("previous", "start")


def round_parent(previous: Parent | None, start: Parent | None, model_settings: dict) -> tuple[Parent | None, bool]:
    """(the model a round trains from, whether it is a transfer: new head, frozen early layers).

    `fine_tune_from` "previous": the previous round's model (warm start), the start model in the
    first round; "start": the start model every round, so that no round inherits the previous
    round's checkpoint (docs/method.md says what each costs and gives). No start model: a
    fresh network."""
    fine_tune_from = model_settings.get("fine_tune_from", "previous")
    if fine_tune_from not in FINE_TUNE_FROM:
        raise ValueError(f"unknown fine_tune_from {fine_tune_from!r}; expected one of {', '.join(FINE_TUNE_FROM)}")
    if previous is not None and fine_tune_from == "previous":
        return previous, False
    return (start, True) if start is not None else (None, False)


def gather_round(session, round_: Round) -> RoundInputs:
    project = session.get(Project, round_.project_id)
    positions = {cls.id: cls.position for cls in project.classes}
    labeled = session.execute(
        select(Image.id, Image.content_hash, Label.class_id)
        .join(Label, Label.image_id == Image.id)
        .where(Image.project_id == project.id, Image.split == "pool", is_current())
        .order_by(Image.id)
    ).all()
    # A reserve cell an annotator holds now will be labeled under its old round: not a candidate.
    held = exists(
        select(Selection.id).where(
            Selection.image_id == Image.id, Selection.leased_by_id.is_not(None), Selection.lease_expires_at > utcnow()
        )
    )
    pool = session.execute(
        select(Image.id, Image.content_hash)
        .where(Image.project_id == project.id, Image.split == "pool", ~current_label_exists(), ~held)
        .order_by(Image.id)
    ).all()
    test = session.execute(
        select(Image.content_hash, Image.reference_class_id)
        .where(Image.project_id == project.id, Image.split == "test", Image.reference_class_id.is_not(None))
        .order_by(Image.id)
    ).all()
    previous = session.scalar(
        select(ModelVersion)
        .join(Round, Round.model_version_id == ModelVersion.id)
        .where(Round.project_id == project.id, Round.number < round_.number)
        .order_by(Round.number.desc())
        .limit(1)
    )
    start = session.get(ModelVersion, project.start_model_id) if project.start_model_id is not None else None
    parent, transfer = round_parent(previous, start, project.model_settings)
    budget_left = project.budget - len(labeled)
    size = project.initial_size if round_.number == 0 else project.step_size
    batch_size = max(0, min(size, budget_left, len(pool)))
    reserve = ReservePlan(
        # the reserve is served only while the labels leave room for the next round's step (labeling.py)
        servable=min(len(pool) - batch_size, budget_left - batch_size - project.step_size),
        share=get_settings().queue_reserve,
        pace_labels_per_s=_recent_pace(session, project.id),
        opened_at=round_.created_at.replace(tzinfo=timezone.utc).timestamp(),
        trained_on=len(labeled),
    )
    pool_clusters, cold_start_note = None, None
    if round_.number == 0 and project.cold_start == "clusters":
        pool_clusters = _pool_clusters(session, project, [i for i, _ in pool])
        if pool_clusters is None:
            cold_start_note = "random (no finished clustering)"
    return RoundInputs(
        project_id=project.id,
        number=round_.number,
        channel=project.channel,
        class_names=[cls.name for cls in project.classes],
        strategy=project.strategy,
        strategy_options=project.strategy_options,
        model_settings=project.model_settings,
        batch_size=batch_size,
        reserve=reserve,
        parent_model_id=parent.id if parent else None,
        parent_checkpoint=parent.checkpoint_key if parent else None,
        transfer=transfer,
        labeled_ids=[i for i, _, _ in labeled],
        labeled_hashes=[h for _, h, _ in labeled],
        labeled_classes=np.array([positions[c] for _, _, c in labeled], dtype=np.int64),
        pool_ids=[i for i, _ in pool],
        pool_hashes=[h for _, h in pool],
        test_hashes=[h for h, _ in test],
        test_classes=np.array([positions[c] for _, c in test], dtype=np.int64),
        pool_clusters=pool_clusters,
        cold_start_note=cold_start_note,
    )


RESERVE_SAFETY = 1.5  # the next round may take longer than this one did
RECENT_LABELS = 50  # the annotators' pace is read off the project's last labels


@dataclass
class ReservePlan:
    """How many cells a round queues beyond its step, so that annotators do not wait for the next
    round. Gathered with the round's inputs; the size is decided when the round picks its cells
    (`size`), when it knows how long it has kept the annotators waiting since the label that
    opened it: the next round trains on more labels (this round's, the step's and the reserve
    labels given meanwhile), so it will keep them about that long times the ratio of the labels."""

    servable: int  # cells beyond the step that the pool holds and the budget lets annotators label
    share: float  # XAL_QUEUE_RESERVE: the least reserve, as a share of the step
    pace_labels_per_s: float | None  # over the project's last RECENT_LABELS labels; None before two
    opened_at: float  # POSIX seconds: when the label that opened the round was given
    trained_on: int  # labels this round trains on

    def size(self, batch: int, now: float) -> tuple[int, dict]:
        """(reserve cells, what they were sized from, kept with the round's selection summary):
        the share of the step, or the pace over the next round's expected wait times
        RESERVE_SAFETY, plus the cells labeled during this round's wait. Those are still in the
        pool it ranks, near the top (they were the previous reserve), and storing the round marks
        such picks labeled: without them the reserve came out short (865 of 958 cells usable,
        bench/README.md, "Round latency"). Never more than `servable`."""
        size = math.ceil(self.share * batch)
        expected_wait = None
        if self.trained_on:
            waited = now - self.opened_at
            labeled_meanwhile = (self.pace_labels_per_s or 0.0) * waited
            expected_wait = waited * (self.trained_on + batch + labeled_meanwhile) / self.trained_on
            if self.pace_labels_per_s:
                needed = RESERVE_SAFETY * self.pace_labels_per_s * expected_wait + labeled_meanwhile
                size = max(size, math.ceil(needed))
        size = max(0, min(size, self.servable))
        return size, {"size": size, "pace_labels_per_s": self.pace_labels_per_s, "expected_wait_s": expected_wait}


def _recent_pace(session, project_id: int) -> float | None:
    """Labels per second over the project's last RECENT_LABELS labels, all annotators together."""
    times = session.scalars(
        select(Label.created_at).where(Label.project_id == project_id).order_by(Label.created_at.desc()).limit(RECENT_LABELS)
    ).all()
    span = (times[0] - times[-1]).total_seconds() if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else None


def _pool_clusters(session, project: Project, pool_ids: list[int]) -> list[int] | None:
    """Each pool cell's cluster under the project's latest finished clustering; None when
    there is none. A cell imported after that clustering gets a cluster of its own (-1)."""
    clustering_id = session.scalar(
        select(PoolClustering.id)
        .where(PoolClustering.project_id == project.id, PoolClustering.state == JobState.DONE)
        .order_by(PoolClustering.id.desc())
        .limit(1)
    )
    if clustering_id is None:
        return None
    clusters = dict(
        session.execute(
            select(ImageCluster.image_id, ImageCluster.cluster).where(ImageCluster.clustering_id == clustering_id)
        ).all()
    )
    return [clusters.get(image_id, -1) for image_id in pool_ids]


def diagnose_previous_batch(session, round_: Round) -> None:
    """Now that the previous round's batch is labeled: how many of its cells had the model
    got wrong, against the error rate it expected on the pool (worker.ml.metrics)."""
    from worker.ml.metrics import selection_diagnostics

    previous = session.scalar(select(Round).where(Round.project_id == round_.project_id, Round.number == round_.number - 1))
    if previous is None or previous.model_version_id is None:
        return
    positions = {cls.id: cls.position for cls in session.get(Project, round_.project_id).classes}
    batch = session.execute(
        select(Selection.score, Selection.details, Label.class_id)
        .join(Label, (Label.image_id == Selection.image_id) & is_current())
        .where(Selection.round_id == previous.id)
    ).all()
    batch = [
        (score, details["predicted"], positions[class_id]) for score, details, class_id in batch if "predicted" in details
    ]
    if batch:
        scores, predicted, labels = zip(*batch)
        previous.diagnostics = selection_diagnostics(
            scores, predicted, labels, previous.selection_summary.get("pool_expected_error")
        )
        session.commit()


def _model_for(inputs: RoundInputs, device):
    """The parent checkpoint (the previous round's, or the project's start model with a new
    head and frozen early layers), or a fresh network when there is none."""
    import torch

    from worker.ml.network import ParallelResidualNet, freeze_early_layers, replace_head
    from worker.ml.training import load_checkpoint

    n_classes = len(inputs.class_names)
    torch.manual_seed(inputs.model_settings.get("seed", 0))  # a fresh network or head is drawn the same each time
    if inputs.parent_checkpoint is None:
        return ParallelResidualNet(n_classes).to(device)
    model = load_checkpoint(get_blob_store().get(inputs.parent_checkpoint), map_location=device)
    if inputs.transfer:
        replace_head(model, n_classes)
        freeze_early_layers(model)
    return model.to(device)


# The executor of a round's pool scoring: (selector model, inputs, device) -> the pool's
# per-cell outputs (worker.ml.strategies.PoolOutputs). `score_in_process` in one pass here;
# worker.chunks.ChunkedScoring with every worker on the queue.
PoolScorer = Callable[[Any, RoundInputs, Any], Any]


def score_in_process(model, inputs: RoundInputs, device, start: int = 0, stop: int | None = None):
    """The outputs of the pool's cells [start, stop) (all of them by default), here."""
    from worker.ml.strategies import compute_pool_outputs

    return compute_pool_outputs(
        model,
        load_cells(inputs.pool_hashes[start:stop], inputs.channel),
        inputs.strategy,
        inputs.strategy_options,
        device,
        scoring_batch_size(inputs),
        precision(inputs),
    )


def compute_round(
    inputs: RoundInputs,
    report: Callable[..., None] = lambda **progress: None,
    score_pool: PoolScorer = score_in_process,
) -> RoundResult:
    """The heavy part: train, evaluate, score the pool with `score_pool`, rank. No database;
    `report(**progress)` is told the phase."""
    from worker.ml.training import resolve_device

    device = resolve_device(get_settings().device)
    model, labeled, result = _train_and_evaluate(inputs, device, report)
    if inputs.batch_size > 0:
        report(phase="scoring", pool=len(inputs.pool_ids))
        started = time.perf_counter()
        selector = model if model is not None else _cold_start_model(inputs, device)
        outputs = score_pool(selector, inputs, device) if selector is not None else None
        select_batch(inputs, selector, device, labeled, outputs, result, report, started)
    return result


def _cold_start_model(inputs: RoundInputs, device):
    """Round 0 has no trained model; a strategy that works in the model's feature space (e.g.
    coverage-entropy) reads the start model's, such as one pretrained on the pool without labels."""
    from worker.ml.strategies import needs

    if inputs.parent_checkpoint is None or "embeddings" not in needs(inputs.strategy):
        return None
    return _model_for(inputs, device)


def precision(inputs: RoundInputs) -> str:
    return inputs.model_settings.get("precision", "fp32")


def scoring_batch_size(inputs: RoundInputs) -> int:
    return inputs.model_settings.get("batch_size", 128)


def _train_and_evaluate(inputs: RoundInputs, device, report: Callable[..., None]):
    """(model or None for round 0, the labeled cells, the result so far): fine-tune on every
    label from the parent checkpoint, then score the test split."""
    from worker.ml.metrics import classification_metrics
    from worker.ml.training import TrainingConfig, predict_proba, save_checkpoint, train_classifier

    timings: dict[str, float] = {}
    result = RoundResult(timings=timings)
    started = time.perf_counter()
    labeled = load_cells(inputs.labeled_hashes, inputs.channel)
    timings["load_s"] = time.perf_counter() - started
    if inputs.number == 0:
        return None, labeled, result

    model = _model_for(inputs, device)
    settings = inputs.model_settings
    config = TrainingConfig(**{k: v for k, v in settings.items() if k in TrainingConfig.__dataclass_fields__})
    config.freeze_early = getattr(model, "early_layers_frozen", False)
    report(phase="training", epoch=0, max_epochs=config.max_epochs)
    validation = None
    if inputs.validation_hashes:
        validation = (load_cells(inputs.validation_hashes, inputs.channel), inputs.validation_classes)
    trained = train_classifier(
        model,
        labeled,
        inputs.labeled_classes,
        config,
        device,
        progress=lambda epoch, total: report(phase="training", epoch=epoch, max_epochs=total),
        validation=validation,
    )
    model = trained.model
    timings["train_s"] = trained.seconds
    result.training = {
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "best_val_loss": trained.best_val_loss,
        "history": trained.history,
        "n_labels": len(labeled),
        "val_acc": trained.history[trained.best_epoch - 1]["val_acc"],
    }
    result.checkpoint = save_checkpoint(model)
    if inputs.test_hashes:
        report(phase="evaluating")
        started = time.perf_counter()
        test = load_cells(inputs.test_hashes, inputs.channel)
        predicted = predict_proba(model, test, device, config.batch_size, config.precision).argmax(1)
        result.metrics = classification_metrics(inputs.test_classes, predicted, len(inputs.class_names))
        result.metrics["class_names"] = inputs.class_names
        timings["evaluate_s"] = time.perf_counter() - started
    return model, labeled, result


def select_batch(
    inputs: RoundInputs,
    model,
    device,
    labeled: np.ndarray,
    outputs,
    result: RoundResult,
    report: Callable[..., None],
    started: float,
) -> None:
    """Rank the pool once from its per-cell outputs (worker.ml.strategies.PoolOutputs, or None:
    random needs none), queue the first batch_size cells with what explains each, render their
    maps. `model` is the round's trained model, or in round 0 a start model that a strategy reads
    features from (the cold start; it explains nothing yet), or None. `started` is when scoring
    began: score_s runs from there to the end of the ranking."""
    from worker.ml.strategies import SelectionContext, rank_pool
    from worker.ml.training import model_outputs

    # Seeded by the round and the project's seed only, so that a simulation of the project with the
    # same seed and labels draws the same cells (tests/service/test_simulation_replays_a_project.py).
    rng = np.random.default_rng([inputs.number, inputs.model_settings.get("seed", 0)])
    trained = inputs.number > 0 and model is not None
    # Round 0 has no trained model: its k cells are random (thesis Table 2, step 2), spread over
    # the pool's clusters (cold start `clusters`), or picked by a strategy that reads a start
    # model's features.
    strategy = inputs.strategy if model is not None else "random"
    if model is None and inputs.pool_clusters is not None:
        strategy = "cluster-spread"
    context = SelectionContext(
        model=model,
        device=device,
        labeled_images=labeled,
        labeled_labels=inputs.labeled_classes,
        pool_size=len(inputs.pool_ids),
        load_pool_images=lambda: load_cells(inputs.pool_hashes, inputs.channel),
        rng=rng,
        batch_size=scoring_batch_size(inputs),
        options=inputs.strategy_options,
        cached_pool_probabilities=outputs.probabilities if outputs is not None else None,
        cached_pool_relevance=outputs.relevance if outputs is not None else None,
        cached_pool_embeddings=outputs.embeddings if outputs is not None else None,
        batch_cells=inputs.batch_size,
        precision=precision(inputs),
        model_accuracy=result.training["val_acc"] if trained and result.training else None,
        pool_clusters=np.asarray(inputs.pool_clusters) if inputs.pool_clusters is not None else None,
    )
    ranking = rank_pool(strategy, context)
    result.summary = ranking.summary
    if strategy == "cluster-spread":
        result.summary["cold_start"] = "clusters"
    if inputs.cold_start_note is not None:
        result.summary["cold_start"] = inputs.cold_start_note
    reserve = 0
    if inputs.reserve is not None:
        reserve, result.summary["reserve"] = inputs.reserve.size(inputs.batch_size, time.time())
    for medoid in result.summary.get("centre_medoids", []):
        _name_labeled_cell(medoid, inputs)
    picked = [int(index) for index in ranking.order[: inputs.batch_size + reserve]]
    pool_probabilities = outputs.probabilities if outputs is not None and trained else None
    picked_probabilities = None  # every strategy's pick shows what the trained model thought of it
    if pool_probabilities is not None:
        picked_probabilities = pool_probabilities[picked]
    elif trained and picked:  # a strategy that read nothing of the pool: the picks alone
        picked_cells = load_cells([inputs.pool_hashes[i] for i in picked], inputs.channel)
        picked_probabilities = model_outputs(model, picked_cells, device, scoring_batch_size(inputs), precision(inputs))[0]
    for rank, index in enumerate(picked):
        details = {"strategy": strategy, **ranking.details[rank]}
        if picked_probabilities is not None:
            details.setdefault("probabilities", [float(p) for p in picked_probabilities[rank]])
            details.setdefault("predicted", int(picked_probabilities[rank].argmax()))
        for nearest in details.get("nearest", []):
            _name_labeled_cell(nearest, inputs)
        result.selected.append((inputs.pool_ids[index], float(ranking.scores[rank]), details))
    if pool_probabilities is not None:
        result.pool_predicted = pool_probabilities.argmax(1)
        result.summary["pool_expected_error"] = float(np.mean(1 - pool_probabilities.max(1)))
    result.timings["score_s"] = time.perf_counter() - started
    if trained and inputs.render_maps:
        report(phase="maps")
        started = time.perf_counter()
        result.maps = _render_maps(model, device, inputs, picked, labeled, result.selected)
        result.timings["maps_s"] = time.perf_counter() - started


MAP_METHODS = ("deeptaylor", "lrp-epsilon")  # the two the pathologist sees beside each queued cell


def _name_labeled_cell(entry: dict, inputs: RoundInputs) -> None:
    """Strategies point at labeled cells by index into L; the UI needs the image and class name."""
    entry["image_id"] = inputs.labeled_ids[entry["labeled_index"]]
    entry["class_name"] = inputs.class_names[entry["class"]]


def _render_maps(model, device, inputs: RoundInputs, picked, labeled_images, selected) -> list[tuple]:
    """(image_id, method, png, npy) for each queued cell and each medoid the queued cells
    are compared with. The npy holds the raw relevance w.r.t. the two wavelet inputs (2x56x56)."""
    from worker.ml.relevance import relevance_maps
    from worker.ml.render import array_npy, heatmap_png

    medoids = sorted({n["labeled_index"] for _, _, details in selected for n in details.get("nearest", [])})
    cells = np.concatenate([load_cells([inputs.pool_hashes[i] for i in picked], inputs.channel), labeled_images[medoids]])
    image_ids = [inputs.pool_ids[i] for i in picked] + [inputs.labeled_ids[i] for i in medoids]
    rendered = []
    for method in MAP_METHODS:
        maps = relevance_maps(model, cells, method, device)
        for image_id, input_map, image_map in zip(image_ids, maps.input_maps, maps.image_maps):
            rendered.append((image_id, method, heatmap_png(image_map), array_npy(input_map)))
    return rendered


def store_round(round_id: int, inputs: RoundInputs, result: RoundResult) -> None:
    with new_session() as session:
        round_ = session.scalar(select(Round).where(Round.id == round_id).with_for_update(key_share=True))
        if round_.state != JobState.RUNNING or session.scalar(
            select(Selection.id).where(Selection.round_id == round_id).limit(1)
        ):
            log.info("round %s was finished elsewhere; dropping this result", round_id)
            return
        if result.checkpoint is not None:
            model = ModelVersion(
                project_id=inputs.project_id,
                parent_id=inputs.parent_model_id,
                name=f"round {inputs.number}",
                checkpoint_key=get_blob_store().put(result.checkpoint),
                class_names=inputs.class_names,
                metrics=result.metrics,
                training=result.training,
            )
            session.add(model)
            session.flush()
            round_.model_version_id = model.id
            store = get_blob_store()
            for image_id, method, png, npy in result.maps:
                session.add(
                    RelevanceMap(
                        image_id=image_id,
                        model_version_id=model.id,
                        method=method,
                        png_key=store.put(png),
                        npy_key=store.put(npy),
                    )
                )
        for rank, (image_id, score, details) in enumerate(result.selected):
            session.add(Selection(round_id=round_id, image_id=image_id, rank=rank, score=score, details=details))
        session.flush()
        mark_labeled_cells(session, round_)
        round_.n_labels = len(inputs.labeled_hashes)
        round_.n_selected = min(len(result.selected), inputs.batch_size)  # the rest is the reserve
        round_.open_cells = session.scalar(
            select(func.count()).where(
                Selection.round_id == round_id, Selection.rank < round_.n_selected, Selection.labeled.is_(False)
            )
        )
        round_.metrics = result.metrics
        round_.selection_summary = result.summary
        round_.timings = {**result.timings, "total_s": (utcnow() - round_.started_at).total_seconds()}
        round_.progress = {"phase": "done"}
        round_.state, round_.finished_at = JobState.DONE, utcnow()
        if not result.selected:
            session.get(Project, inputs.project_id).state = "finished"
        session.commit()
