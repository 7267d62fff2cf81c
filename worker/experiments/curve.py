"""`xal simulate --curve`: the active-learning experiment at the pool's real size, one run per case
and seed, affordable on a CPU.

The thesis's protocol (worker.experiments.per_budget) runs every budget B separately, each with
its own k = 15% and m = 10% of B. Here one run per case and seed labels the pool step by step up
to `to_pct` of it, training, testing and recording ACA/MCA after every step, so the 2/5/10/20%
points are read off one curve: k = 10% and m = 5% of the largest budget (20% of the pool), i.e.
2% of the pool first, then 1% per step. Each round is the product's own
(worker.rounds.compute_round): the previous step's model is fine-tuned on every label so far (warm
start), with early stopping on a validation set that is fixed and the same for every case and
seed, not on the strategy's picks.

Split (no seed changes it): with `test_data`, that folder is the test set and `validation_fraction`
of the data folder, by content hash within each class, is the validation set; without it, the
data folder's first 20% by hash within each class is the test split and the next
`validation_fraction` the validation set (worker.experiments.cells.split_by_hash). The pool is
the rest.

Start models: `scratch` (a fresh network) or `contrastive` (pretrained on the pool without labels,
worker.ml.pretext; trained once, kept in the cache, shared by every case and seed, so the
comparison stays fair).

Resumable at every step: out/runs/<case>_seed<seed>.json holds the steps so far, the labeled
cells and the cells the last round queued; a rerun (with a larger `to_pct` too) goes on from
there. Tables: steps.csv (every step), summary.csv (ACA/MCA at the read-off points, mean and sd
over seeds, and the paired difference to `rs` of the same start per seed), reach.csv and
label_efficiency.png.
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backend.core.blobs import BlobStore
from backend.core.errors import Invalid
from worker.experiments.cells import CHANNEL, LabeledCells, Split, oracle_round, read_labeled_folder, split_by_hash
from worker.experiments.store import blob_store_under, machine, pyplot, write_csv, write_json
from worker.ml.metrics import selection_diagnostics
from worker.ml.pretext import PretextConfig, pretrain_contrastive
from worker.ml.training import TrainingConfig, resolve_device, save_checkpoint
from worker.rounds import compute_round, load_cells, round_parent

READ_OFF_PCT = (2, 5, 10, 20)
FULL_BUDGET_PCT = 20.0
FIRST_STEP_OF_BUDGET = 0.10  # k, of the 20% budget
STEP_OF_BUDGET = 0.05  # m, of the 20% budget


@dataclass
class CurveCase:
    strategy: str
    options: dict = field(default_factory=dict)
    start: str = "contrastive"  # or "scratch"
    full: bool = False  # one training on every pool cell's label: the full-data ACA the curves aim at
    # overrides of the out dir's training settings for this case only
    training: dict = field(default_factory=dict)


# patience None: every epoch of the schedule, whatever the out dir's max_epochs (the runs committed
# before this was possible hold the same thing as a patience equal to max_epochs)
FULL_DATA_TRAINING = {"max_epochs": 30, "patience": None}
NO_EARLY_STOP = {"patience": None}
XAL_CONCEPT = {"relevance_method": "deeptaylor", "representation": "concept", "centres": "clusters"}

CURVE_CASES = {
    "rs": CurveCase("random"),
    "cal": CurveCase("entropy"),
    "coverage-entropy": CurveCase("coverage-entropy"),
    "xal-concept-clusters": CurveCase("xal-entropy", XAL_CONCEPT),
    "xal-pixel-clusters": CurveCase("xal-entropy", {**XAL_CONCEPT, "representation": "pixel"}),
    # The full-data ceilings (from either start) train once, so they get the whole cosine schedule
    # and no early stop: with the curves' patience 4 the first one stopped at epoch 7 of 20 while
    # the lr was still high. (Its low accuracy then, 77.7%, was the batch-norm order bug.)
    "full": CurveCase("random", full=True, training=FULL_DATA_TRAINING),
    "full-scratch": CurveCase("random", start="scratch", full=True, training=FULL_DATA_TRAINING),
    # every round trains from the start model again instead of the previous round's model
    "rs-restart": CurveCase("random", training={"fine_tune_from": "start"}),
    "coverage-entropy-restart": CurveCase("coverage-entropy", training={"fine_tune_from": "start"}),
    # every round runs its whole cosine schedule (no early stop) and keeps its best epoch: a
    # warm-started round whose first epochs at the peak lr scored worse than the model it started
    # from no longer stops there
    "rs-no-early-stop": CurveCase("random", training=NO_EARLY_STOP),
    "coverage-entropy-no-early-stop": CurveCase("coverage-entropy", training=NO_EARLY_STOP),
    # coverage until the model's validation accuracy reaches 0.90 instead of 0.85
    "coverage-entropy-handover-90": CurveCase("coverage-entropy", {"handover_accuracy": 0.9}, training=NO_EARLY_STOP),
    # the hybrid with margin instead of entropy once it hands over (TCM: TypiClust, then margin)
    "coverage-margin-no-early-stop": CurveCase("coverage-margin", training=NO_EARLY_STOP),
    # the alternatives the issue keeps beside the hybrid, with the product's training
    "cal-no-early-stop": CurveCase("entropy", training=NO_EARLY_STOP),
    "xal-concept-no-early-stop": CurveCase("xal-entropy", XAL_CONCEPT, training=NO_EARLY_STOP),
    "rs-scratch": CurveCase("random", start="scratch"),
    "cal-scratch": CurveCase("entropy", start="scratch"),
}


@dataclass
class CurveSettings:
    """What every run in one out dir shares; a rerun into it must bring the same."""

    data: str
    test_data: str | None = None
    test_fraction: float = 0.2
    validation_fraction: float = 0.03
    max_epochs: int = 20
    patience: int = 4
    batch_size: int = 128
    precision: str = "bf16"
    class_weighting: str = "balanced"
    pretext_epochs: int = 20

    def model_settings(self, seed: int) -> dict:
        return asdict(
            TrainingConfig(
                max_epochs=self.max_epochs,
                patience=self.patience,
                batch_size=self.batch_size,
                seed=seed,
                precision=self.precision,
                class_weighting=self.class_weighting,
            )
        )


def step_sizes(pool_size: int) -> tuple[int, int]:
    """(k, m): 10% and 5% of the 20% budget."""
    budget = round(pool_size * FULL_BUDGET_PCT / 100)
    return max(1, round(FIRST_STEP_OF_BUDGET * budget)), max(1, round(STEP_OF_BUDGET * budget))


def step_plan(pool_size: int, to_pct: float) -> list[int]:
    """The labels each step trains on, up to the step nearest to `to_pct` of the pool."""
    first, step = step_sizes(pool_size)
    limit = pool_size * to_pct / 100 + step / 2
    return list(range(first, max(first, int(limit)) + 1, step))


def curve_split(cells: LabeledCells, test_cells: LabeledCells | None, settings: CurveSettings) -> Split:
    if test_cells is None:
        return split_by_hash(cells, settings.test_fraction, settings.validation_fraction)
    split = split_by_hash(cells, 0.0, settings.validation_fraction)
    return Split(split.pool, np.zeros(0, dtype=np.int64), split.pretrain, split.validation)


def contrastive_start(cells: LabeledCells, split: Split, settings: CurveSettings, store: BlobStore, cache: Path) -> dict:
    """The pool's contrastive pretraining (once; kept in the cache): checkpoint key and record."""
    path = cache / "contrastive-pool.json"
    config = PretextConfig(epochs=settings.pretext_epochs, bf16=settings.precision == "bf16")
    if path.exists():
        record = json.loads(path.read_text())
        if record["config"] == asdict(config) and record["pool"] == split.sizes and store.exists(record["checkpoint"]):
            return record
    pool = load_cells([cells.hashes[i] for i in split.pool], CHANNEL)
    with tqdm(total=config.epochs, unit="epoch", file=sys.stderr, desc="contrastive pretraining", leave=False) as bar:
        result = pretrain_contrastive(
            pool, config, resolve_device("auto"), len(cells.class_names), progress=lambda *_: bar.update(1)
        )
    record = {
        "checkpoint": store.put(save_checkpoint(result.model)),
        "config": asdict(config),
        "pool": split.sizes,
        "history": result.history,
        "seconds": result.seconds,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(path, record)
    return record


def _run_path(out: Path, case: str, seed: int) -> Path:
    return out / "runs" / f"{case}_seed{seed}.json"


def run_curve(
    cells: LabeledCells,
    test: LabeledCells,
    split: Split,
    case_name: str,
    seed: int,
    to_pct: float,
    settings: CurveSettings,
    store: BlobStore,
    start_checkpoint: str | None,
    out: Path,
    advance=lambda: None,
) -> dict:
    """One case and seed, step by step up to `to_pct`, resuming from its run file."""
    case = CURVE_CASES[case_name]
    path = _run_path(out, case_name, seed)
    record = (
        json.loads(path.read_text())
        if path.exists()
        else {
            "case": case_name,
            "seed": seed,
            "strategy": case.strategy,
            "strategy_options": case.options,
            "start": case.start,
            "training_overrides": case.training,
            "class_names": cells.class_names,
            "sizes": {**split.sizes, "test": len(test.hashes)},
            "settings": asdict(settings),
            "steps": [],
            "labeled": [],
            "queued": None,
            "parent": None,
            "seconds": 0.0,
        }
    )
    first, increment = step_sizes(len(split.pool))
    limit = step_plan(len(split.pool), to_pct)[-1]
    model_settings = {**settings.model_settings(seed), **case.training}
    validation = {
        "validation_hashes": [cells.hashes[i] for i in split.validation],
        "validation_classes": cells.labels[split.validation],
    }
    while True:
        # round 0 queues k cells; each later round trains on every label so far and queues m more
        if case.full:
            if record["steps"]:
                break
            record["queued"] = [int(i) for i in split.pool]
        labeled = record["labeled"] + (record["queued"] or [])
        if record["queued"] is not None and len(labeled) > limit and not case.full:
            break
        number = len(record["steps"]) + (0 if record["queued"] is None else 1)
        size = 0 if case.full else first if record["queued"] is None else increment
        started = time.perf_counter()
        in_pool = set(labeled)
        unlabeled = [int(i) for i in split.pool if int(i) not in in_pool]
        parent, transfer = round_parent(record["parent"], start_checkpoint, model_settings)
        torch.manual_seed(seed)  # a transferred model's new head is drawn from the global generator
        result = compute_round(
            oracle_round(
                cells,
                number,
                case.strategy,
                case.options,
                model_settings,
                size,
                parent,
                transfer,
                labeled,
                unlabeled,
                test,
                **validation,
            )
        )
        picked = [pool_id for pool_id, _, _ in result.selected]
        if result.checkpoint is not None:
            if record["parent"] is not None:
                store.delete(record["parent"])
            record["parent"] = store.put(result.checkpoint)
            metrics, training = result.metrics, result.training
            step = {
                "step": number,
                "n_labels": len(labeled),
                "aca": metrics["aca"],
                "mca": metrics["mca"],
                "per_class_accuracy": metrics["per_class_accuracy"],
                "confusion": metrics["confusion"],
                "epochs_run": training["epochs_run"],
                "best_epoch": training["best_epoch"],
                "val_acc": training["val_acc"],
                "history": training["history"],
                "selection_summary": result.summary,
                "timings": {**result.timings, "round_s": time.perf_counter() - started},
                "picked_classes": np.bincount(cells.labels[picked], minlength=len(cells.class_names)).tolist(),
            }
            if result.pool_predicted is not None and picked:
                truth = cells.labels[unlabeled]
                step["diagnostics"] = {
                    **selection_diagnostics(
                        [score for _, score, _ in result.selected],
                        [details["predicted"] for _, _, details in result.selected],
                        cells.labels[picked],
                        result.summary.get("pool_expected_error"),
                    ),
                    "pool_error_rate": float(np.mean(result.pool_predicted != truth)),
                }
            record["steps"].append(step)
        else:
            record["first_batch"] = {
                "summary": result.summary,
                "picked_classes": np.bincount(cells.labels[picked], minlength=len(cells.class_names)).tolist(),
            }
        record["labeled"], record["queued"] = labeled, picked
        record["seconds"] += time.perf_counter() - started
        write_json(path, record)
        advance()
    return record


def curve(
    settings: CurveSettings, out: Path, cases: list[str], seeds: list[int], to_pct: float, cache: Path | None = None
) -> None:
    out = Path(out)
    cache = Path(cache) if cache else out / "cache"
    unknown = [case for case in cases if case not in CURVE_CASES]
    if unknown:
        raise Invalid(f"unknown case {', '.join(unknown)}; the curve cases are {', '.join(CURVE_CASES)}")
    if not 0 < to_pct <= FULL_BUDGET_PCT:
        raise Invalid(f"--to is a percentage of the pool in (0, {FULL_BUDGET_PCT:g}], got {to_pct}")
    with blob_store_under(cache) as store:
        cells = read_labeled_folder(Path(settings.data), None, store)
        test_cells = read_labeled_folder(Path(settings.test_data), None, store) if settings.test_data else None
        split = curve_split(cells, test_cells, settings)
        if test_cells is None:
            test_cells = cells.subset(split.test)
        elif test_cells.class_names != cells.class_names:
            raise Invalid(f"the test folder's classes {test_cells.class_names} differ from the data's {cells.class_names}")
        config = {
            "settings": asdict(settings),
            "class_names": cells.class_names,
            "sizes": {**split.sizes, "test": len(test_cells.hashes)},
            "plan_to_20pct": step_plan(len(split.pool), FULL_BUDGET_PCT),
            "machine": machine(),
        }
        _check_config(out, config)
        start = None
        if any(CURVE_CASES[case].start == "contrastive" for case in cases):
            start = contrastive_start(cells, split, settings, store, cache)["checkpoint"]
        todo = [(case, seed) for seed in seeds for case in cases]
        with tqdm(total=len(todo) * len(step_plan(len(split.pool), to_pct)), unit="round", file=sys.stderr) as bar:
            for case, seed in todo:
                bar.set_description(f"{case} seed {seed}")
                run_curve(
                    cells,
                    test_cells,
                    split,
                    case,
                    seed,
                    to_pct,
                    settings,
                    store,
                    start if CURVE_CASES[case].start == "contrastive" else None,
                    out,
                    lambda: bar.update(1),
                )
                write_curve_outputs(out)
    write_curve_outputs(out)


def _check_config(out: Path, config: dict) -> None:
    path = out / "config.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before["settings"] != config["settings"]:
            raise Invalid(
                f"{out} holds runs made with other settings ({before['settings']}); rerun with those or use another --out"
            )
    write_json(path, config)


# --- tables and plot ---


def _records(out: Path) -> list[dict]:
    order = {name: i for i, name in enumerate(CURVE_CASES)}
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    return sorted(records, key=lambda r: (order.get(r["case"], len(order)), r["seed"]))


def read_off(record: dict, pct: float, pool_size: int) -> dict | None:
    """The step trained on pct% of the pool (the nearest within half a step); None when the run
    has not got there."""
    target = pool_size * pct / 100
    _, step = step_sizes(pool_size)
    near = [s for s in record["steps"] if abs(s["n_labels"] - target) <= step / 2]
    return min(near, key=lambda s: abs(s["n_labels"] - target)) if near else None


def read_off_window(record: dict, pct: float, pool_size: int) -> dict | None:
    """ACA and MCA averaged over the read-off step and the steps either side of it (1% of the
    pool each way): a single step carries the step-to-step noise of its training (a step whose
    early stop kept epoch 1 or 2 lost 1.7 points on average); None when the run has no step
    beyond the read-off one."""
    point = read_off(record, pct, pool_size)
    if point is None:
        return None
    _, step = step_sizes(pool_size)
    near = [s for s in record["steps"] if abs(s["n_labels"] - point["n_labels"]) <= 1.5 * step]
    if len(near) < 3:
        return None
    return {metric: float(np.mean([s[metric] for s in near])) for metric in ("aca", "mca")}


def write_curve_outputs(out: Path) -> None:
    out = Path(out)
    records = _records(out)
    if not records:
        return
    pool_size = records[0]["sizes"]["pool"]
    write_csv(
        out / "steps.csv",
        [
            "case",
            "seed",
            "step",
            "n_labels",
            "pct_of_pool",
            "aca",
            "mca",
            "val_acc",
            "epochs_run",
            "best_epoch",
            "phase",
            "hit_rate",
            "pool_error_rate",
            "round_s",
        ],
        [
            {
                "case": r["case"],
                "seed": r["seed"],
                **{k: s[k] for k in ("step", "n_labels", "aca", "mca", "val_acc", "epochs_run", "best_epoch")},
                "pct_of_pool": round(100 * s["n_labels"] / pool_size, 2),
                "phase": s["selection_summary"].get("phase", ""),
                "hit_rate": (s.get("diagnostics") or {}).get("hit_rate", ""),
                "pool_error_rate": (s.get("diagnostics") or {}).get("pool_error_rate", ""),
                "round_s": round(s["timings"]["round_s"], 1),
            }
            for r in records
            for s in r["steps"]
        ],
    )
    by_case: dict[str, dict[int, dict]] = {}
    for r in records:
        by_case.setdefault(r["case"], {})[r["seed"]] = r
    rows = []
    for case, runs in by_case.items():
        if _is_full(case):
            continue
        start = CURVE_CASES[case].start if case in CURVE_CASES else runs[next(iter(runs))]["start"]
        baseline_case = random_baseline(case, start)
        baseline = by_case.get(baseline_case, {})
        compared = case != baseline_case
        for pct in READ_OFF_PCT:
            points = {seed: read_off(r, pct, pool_size) for seed, r in runs.items()}
            points = {seed: p for seed, p in points.items() if p is not None}
            if not points:
                continue
            row = {
                "case": case,
                "start": start,
                "baseline": baseline_case if compared else "",
                "pct_of_pool": pct,
                "n_labels": round(pool_size * pct / 100),
                "n_seeds": len(points),
                "seeds": " ".join(map(str, sorted(points))),
            }
            for metric in ("aca", "mca"):
                values = [p[metric] for p in points.values()]
                row[f"{metric}_mean"] = float(np.mean(values))
                row[f"{metric}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else ""
                paired = [
                    p[metric] - b[metric]
                    for seed, p in points.items()
                    if seed in baseline and (b := read_off(baseline[seed], pct, pool_size)) is not None
                ]
                row[f"{metric}_minus_rs_per_seed"] = " ".join(f"{100 * d:+.1f}" for d in paired) if compared else ""
                row[f"{metric}_minus_rs_min"] = 100 * min(paired) if paired and compared else ""
                windowed = [
                    w[metric] - b[metric]
                    for seed, r in runs.items()
                    if seed in baseline
                    and (w := read_off_window(r, pct, pool_size)) is not None
                    and (b := read_off_window(baseline[seed], pct, pool_size)) is not None
                ]
                row[f"{metric}_3_steps_minus_rs_per_seed"] = (
                    " ".join(f"{100 * d:+.1f}" for d in windowed) if compared else ""
                )
            rows.append(row)
    header = [
        "case",
        "start",
        "baseline",
        "pct_of_pool",
        "n_labels",
        "n_seeds",
        "seeds",
        "aca_mean",
        "aca_sd",
        "aca_minus_rs_per_seed",
        "aca_minus_rs_min",
        "mca_mean",
        "mca_sd",
        "mca_minus_rs_per_seed",
        "mca_minus_rs_min",
        "aca_3_steps_minus_rs_per_seed",
        "mca_3_steps_minus_rs_per_seed",
    ]
    write_csv(out / "summary.csv", header, rows)
    _write_reach(out / "reach.csv", by_case, pool_size)
    _plot(out / "label_efficiency.png", by_case, pool_size)
    for case, name in (
        ("rs", "training_curves.png"),
        ("rs-restart", "training_curves_restart.png"),
        ("rs-no-early-stop", "training_curves_no_early_stop.png"),
    ):
        runs = by_case.get(case, {})
        if runs and runs[min(runs)]["steps"]:
            _plot_trainings(out / name, runs[min(runs)], pool_size)


def _is_full(case: str) -> bool:
    return case in CURVE_CASES and CURVE_CASES[case].full


def random_baseline(case: str, start: str) -> str:
    """The random-sampling case that `case` is compared with, seed by seed: the one with the same
    start model and the same training (its own name for a random case)."""
    if case in CURVE_CASES:
        spec = CURVE_CASES[case]
        for name, other in CURVE_CASES.items():
            if (
                other.strategy == "random"
                and not other.full
                and (other.start, other.training) == (spec.start, spec.training)
            ):
                return name
    return "rs" if start == "contrastive" else "rs-scratch"  # a case of an older out dir


def _plot_trainings(path: Path, record: dict, pool_size: int) -> None:
    """One run's trainings, step after step: validation loss and accuracy per epoch,
    the checkpoint kept marked, and the test ACA of each step's model."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    epoch = 0
    for step in record["steps"]:
        history = step["history"]
        x = [epoch + h["epoch"] for h in history]
        left.plot(x, [h["val_loss"] for h in history], color="tab:blue", lw=1)
        left.plot(x, [h["train_loss"] for h in history], color="tab:grey", lw=1, alpha=0.6)
        right.plot(x, [100 * h["val_acc"] for h in history], color="tab:blue", lw=1)
        right.plot(epoch + step["best_epoch"], 100 * step["aca"], "o", color="tab:red", ms=4)
        left.axvline(epoch + 0.5, color="black", alpha=0.1)
        epoch += len(history)
    left.set_ylabel("loss")
    left.set_title("validation (blue) and training (grey) loss", fontsize=9)
    right.set_ylabel("accuracy (%)")
    right.set_title("validation accuracy (line), test ACA of each step's kept checkpoint (dots)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("epoch, over all steps (a new step at each grey line)")
        ax.grid(alpha=0.3)
    trained_from = (
        "the start model again"
        if record.get("training_overrides", {}).get("fine_tune_from") == "start"
        else "the previous step's model"
    )
    fig.suptitle(
        f"{record['case']} seed {record['seed']}, {record['steps'][0]['n_labels']} to {record['steps'][-1]['n_labels']} "
        f"labels of {pool_size}: each step trains from {trained_from}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_curve(runs: dict[int, dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n_labels, mean ACA and its sd over the seeds that reached each step."""
    steps: dict[int, list[float]] = {}
    for r in runs.values():
        for s in r["steps"]:
            steps.setdefault(s["n_labels"], []).append(s["aca"])
    n = np.array(sorted(steps))
    return (
        n,
        np.array([np.mean(steps[k]) for k in n]),
        np.array([np.std(steps[k], ddof=1) if len(steps[k]) > 1 else 0 for k in n]),
    )


def _write_reach(path: Path, by_case: dict, pool_size: int) -> None:
    """Per case: the fewest labels at which its mean ACA over seeds reaches the full-data ACA
    minus 1 point (when the `full` run exists) and a few fixed levels."""
    full = by_case.get("full", {})
    levels = [("full-data ACA - 1 pt", np.mean([r["steps"][0]["aca"] for r in full.values()]) - 0.01)] if full else []
    levels += [(f"{level:.2f}", level) for level in (0.85, 0.90, 0.95)]
    rows = []
    for case, runs in by_case.items():
        if _is_full(case):
            continue
        n, aca, _ = _mean_curve(runs)
        if not len(n):  # its runs have queued their first batch only
            continue
        for name, level in levels:
            hit = n[aca >= level]
            rows.append(
                {
                    "case": case,
                    "target": name,
                    "aca_target": round(float(level), 4),
                    "labels_needed": int(hit[0]) if len(hit) else f"> {int(n[-1])}",
                    "pct_of_pool": round(100 * hit[0] / pool_size, 2) if len(hit) else "",
                }
            )
    write_csv(path, ["case", "target", "aca_target", "labels_needed", "pct_of_pool"], rows)


def _plot(path: Path, by_case: dict, pool_size: int) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, metric in zip(axes, ("aca", "mca")):
        for case, runs in by_case.items():
            if _is_full(case):
                ax.axhline(
                    100 * np.mean([r["steps"][0][metric] for r in runs.values()]),
                    color="black",
                    linestyle=":" if case == "full" else "--",
                    label=f"every pool cell labeled ({CURVE_CASES[case].start} start)",
                )
                continue
            steps: dict[int, list[float]] = {}
            for r in runs.values():
                for s in r["steps"]:
                    steps.setdefault(s["n_labels"], []).append(s[metric])
            n = np.array(sorted(steps))
            mean = np.array([np.mean(steps[k]) for k in n])
            sd = np.array([np.std(steps[k], ddof=1) if len(steps[k]) > 1 else 0 for k in n])
            style = "--" if case.endswith("-scratch") else "-"
            (line,) = ax.plot(100 * n / pool_size, 100 * mean, style, marker=".", label=f"{case} ({len(runs)} seeds)")
            ax.fill_between(100 * n / pool_size, 100 * (mean - sd), 100 * (mean + sd), color=line.get_color(), alpha=0.15)
        ax.set_xlabel("labeled share of the pool (%)")
        ax.set_ylabel(f"{metric.upper()} on the test split (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Label efficiency, one run per case and seed: pool {pool_size} cells; mean ± sd over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
