"""`xal simulate`: the thesis's active-learning experiment (4.2, Table 6) replayed on a labeled
folder with the ground truth as the oracle, through the product's own round code
(worker.rounds.compute_round) and no database.

Per seed: a pretraining part for the IN-* cases (stratified, classes in `pretrain_exclude` left
out, as the thesis's small set lacked Golgi), then a stratified test split and the pool, each
optionally subsampled (stratified). Per case, seed and budget B (% of the pool): round 0 queues
k = 15% of B (at least one cell per class) at random, each later round fine-tunes the previous round's model on all labels so
far, evaluates it on the test split and queues m = 10% of B more, until B is spent; the last
round only trains and evaluates (thesis Table 2, the product's budget loop). 100% labels the
whole pool in round 0 and trains once: there is no selection, so it is computed once per seed
and start (scratch, pretrained) and shared by the cases.

`out` holds config.json (the settings a rerun must repeat, the split sizes), runs/ (one JSON per
finished case x seed x budget: a rerun skips those) and the tables and plots rebuilt from runs/
after every run: steps.csv, summary.csv, diagnostics.csv, reach.csv, confusion.csv,
label_efficiency.png, confusion.png. The cache (out/cache unless told) holds the cells' and
checkpoints' blobs and the pretrained models: copies of the cells, so keep it out of a repository."""

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backend.core.blobs import BlobStore
from backend.core.budget import budget_sizes, half_up
from backend.core.errors import Invalid
from backend.core.settings import get_settings
from worker.experiments.cells import CHANNEL, LabeledCells, Split, oracle_round, read_labeled_folder, stratified_sample
from worker.experiments.pretrain import pretrain
from worker.experiments.store import blob_store_under, machine, pyplot, write_csv, write_json
from worker.ml.metrics import selection_diagnostics
from worker.ml.strategies import STRATEGIES
from worker.ml.training import TrainingConfig, resolve_device, stratified_holdout
from worker.rounds import compute_round, load_cells, round_parent


@dataclass
class Case:
    strategy: str
    options: dict = field(default_factory=dict)
    pretrained: bool = False  # starts from the seed's pretrained model (new head, early layers frozen)
    cold_start: str = "random"  # round 0: random, or `clusters` (spread over a deep clustering of the pool)


_DEEP_TAYLOR = {"relevance_method": "deeptaylor"}  # the thesis's maps
# The XAL cases score with xal-entropy, the relevance-space twin of CAL's softmax entropy
# (thesis eq. 16 beside eq. 1): they differ from CAL in the space only.
CASES = {
    "rs": Case("random"),
    "cal": Case("entropy"),
    "xal-pixel-clusters": Case("xal-entropy", {**_DEEP_TAYLOR, "representation": "pixel", "centres": "clusters"}),
    "xal-concept-clusters": Case("xal-entropy", {**_DEEP_TAYLOR, "representation": "concept", "centres": "clusters"}),
    "xal-concept-classes": Case("xal-entropy", {**_DEEP_TAYLOR, "representation": "concept", "centres": "classes"}),
    "in-rs": Case("random", pretrained=True),
    "in-al": Case("entropy", pretrained=True),
    # the product's `cold_start = clusters` (issue #5): as rs and cal, but round 0 spreads its k
    # cells over a deep clustering of the pool (the product's default clustering settings)
    "rs-clusters-start": Case("random", cold_start="clusters"),
    "cal-clusters-start": Case("entropy", cold_start="clusters"),
}
CEILING = 100.0


@dataclass
class SimulationSettings:
    """What every run in one out dir shares; a rerun into it must bring the same."""

    data: str
    labels: str | None = None
    test_fraction: float = 0.2
    pool_size: int | None = None  # None: every cell left after the pretraining part and the test split
    test_size: int | None = None
    pretrain_size: int = 1000
    pretrain_exclude: list[str] = field(default_factory=lambda: ["Golgi"])
    max_epochs: int = 30
    # for the trainings done once rather than round after round: the pretraining and the 100%
    # ceiling, each on many more cells than a round adds (None: max_epochs)
    single_training_epochs: int | None = None
    patience: int = 5
    batch_size: int = 128

    def training_config(self, seed: int, single: bool = False) -> TrainingConfig:
        epochs = (self.single_training_epochs or self.max_epochs) if single else self.max_epochs
        return TrainingConfig(max_epochs=epochs, patience=self.patience, batch_size=self.batch_size, seed=seed)


def split_cells(cells: LabeledCells, seed: int, settings: SimulationSettings) -> Split:
    rng = np.random.default_rng(seed)
    everything = np.arange(len(cells.labels))
    pretrain_part = everything[:0]
    if settings.pretrain_size:
        eligible = everything[~np.isin(cells.labels, cells.positions(settings.pretrain_exclude))]
        pretrain_part = np.sort(eligible[stratified_sample(cells.labels[eligible], settings.pretrain_size, rng)])
    rest = np.setdiff1d(everything, pretrain_part)
    pool_part, test_part = stratified_holdout(cells.labels[rest], settings.test_fraction, rng)
    pool, test = rest[pool_part], rest[test_part]
    if settings.pool_size:
        pool = pool[np.sort(stratified_sample(cells.labels[pool], settings.pool_size, rng))]
    if settings.test_size:
        test = test[np.sort(stratified_sample(cells.labels[test], settings.test_size, rng))]
    return Split(pool, test, pretrain_part)


def budget_plan(pool_size: int, budget_pct: float, n_classes: int) -> list[int]:
    """Cells each round queues: k, then m until the budget B is spent, then 0 (that round only
    trains). B is budget_pct of the pool; k and m as the product sets them (backend.core.budget)."""
    budget = max(1, half_up(pool_size * budget_pct / 100))
    budget, initial, step = budget_sizes(pool_size, n_classes, budget, budget if budget_pct >= CEILING else None)
    sizes = [initial]
    while sum(sizes) < budget:
        sizes.append(min(step, budget - sum(sizes)))
    return sizes + [0]


def _run_path(out: Path, case: str, seed: int, budget_pct: float) -> Path:
    return out / "runs" / f"{case}_seed{seed}_budget{budget_pct:g}.json"


def run_case(
    cells: LabeledCells,
    split: Split,
    case_name: str,
    seed: int,
    budget_pct: float,
    settings: SimulationSettings,
    store: BlobStore,
    start_checkpoint: str | None,
    advance=lambda: None,
    pool_clusters: list[int] | None = None,
) -> dict:
    """One case x seed x budget, round by round; returns its record. `pool_clusters` (each
    split.pool cell's cluster) seeds round 0 of a `cold_start = clusters` case."""
    case = CASES[case_name]
    plan = budget_plan(len(split.pool), budget_pct, len(cells.class_names))
    labeled: list[int] = []
    unlabeled = [int(i) for i in split.pool]
    start = start_checkpoint if case.pretrained else None
    previous = None  # the last round's checkpoint
    steps, diagnostics, final_metrics, batches = [], [], {}, []
    model_settings = asdict(settings.training_config(seed, single=budget_pct >= CEILING))
    # compute_round draws a transferred model's new head from torch's global generator: seed it
    # here, or an in-* run would depend on what ran before it in this process.
    torch.manual_seed(seed)
    test = cells.subset(split.test)
    started = time.perf_counter()
    for number, size in enumerate(plan):
        round_started = time.perf_counter()
        parent, transfer = round_parent(previous, start, model_settings)
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
                pool_clusters=pool_clusters if number == 0 else None,
            )
        )
        if result.checkpoint is not None:
            if previous is not None:
                store.delete(previous)  # needed by the next round only; ~1.6 MB each adds up over hundreds
            previous = store.put(result.checkpoint)
            metrics = result.metrics
            final_metrics = metrics
            steps.append(
                {
                    "step": number,
                    "n_labels": len(labeled),
                    "aca": metrics["aca"],
                    "mca": metrics["mca"],
                    "per_class_accuracy": metrics["per_class_accuracy"],
                    "epochs_run": result.training["epochs_run"],
                    "best_epoch": result.training["best_epoch"],
                    "selection_summary": result.summary,
                    "timings": {**result.timings, "round_s": time.perf_counter() - round_started},
                }
            )
        picked = [pool_id for pool_id, _, _ in result.selected]
        if number == 0:
            first_batch_summary = result.summary  # round 0 trains nothing, so no step holds it
        if result.pool_predicted is not None:
            truth = cells.labels[unlabeled]
            batch = selection_diagnostics(
                [score for _, score, _ in result.selected],
                [details["predicted"] for _, _, details in result.selected],
                cells.labels[picked],
                result.summary.get("pool_expected_error"),
            )
            diagnostics.append(
                {
                    "step": number,
                    "n_selected": len(picked),
                    "hit_rate": batch["hit_rate"],
                    "pool_error_rate": float(np.mean(result.pool_predicted != truth)),
                    "pool_expected_error": batch["pool_expected_error"],
                    "error_auroc": batch["error_auroc"],
                }
            )
        batches.append(picked)
        labeled += picked
        chosen = set(picked)
        unlabeled = [i for i in unlabeled if i not in chosen]
        advance()
    if previous is not None:
        store.delete(previous)
    return {
        "case": case_name,
        "seed": seed,
        "budget_pct": budget_pct,
        "budget": sum(plan),
        "plan": plan,
        "strategy": case.strategy,
        "strategy_options": case.options,
        "pretrained": case.pretrained,
        "cold_start": case.cold_start,
        "class_names": cells.class_names,
        "sizes": split.sizes,
        "settings": asdict(settings),
        "steps": steps,
        "diagnostics": diagnostics,
        "final_metrics": final_metrics,
        "labeled": labeled,  # cell indices in the order they were queued
        "batches": batches,  # each round's queued cells, in rank order
        "first_batch_summary": first_batch_summary,
        "seconds": time.perf_counter() - started,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }


def _pretrained_checkpoint(
    cells: LabeledCells, split: Split, seed: int, settings: SimulationSettings, store: BlobStore, cache: Path
) -> dict:
    """The seed's pretrained model (trained once, kept in the cache): checkpoint key and record."""
    path = cache / f"pretrained-seed{seed}.json"
    if path.exists():
        record = json.loads(path.read_text())
        if record["settings"] == asdict(settings) and store.exists(record["checkpoint"]):
            return record
    part = cells.subset(split.pretrain).excluding(settings.pretrain_exclude)
    config = settings.training_config(seed, single=True)
    with tqdm(total=config.max_epochs, unit="epoch", file=sys.stderr, desc=f"pretraining seed {seed}", leave=False) as bar:
        trained = pretrain(
            load_cells(part.hashes, CHANNEL),
            part.labels,
            part.class_names,
            config,
            resolve_device(get_settings().device),
            progress=lambda epoch, _: bar.update(1),
        )
    record = {
        "checkpoint": store.put(trained.checkpoint),
        "n_cells": len(part.hashes),
        **trained.record,
        "settings": asdict(settings),
    }
    write_json(path, record)
    return record


def _pool_clusters(cells: LabeledCells, split: Split, seed: int, store: BlobStore, cache: Path) -> dict:
    """The seed's deep clustering of its pool, as a project's worker computes it with the default
    settings (kept in the cache): each pool cell's cluster and the clustering's metrics (the
    labels only score it)."""
    from backend.core.jobs import ClusteringConfig
    from worker.clustering import compute_clustering

    config = {**ClusteringConfig().model_dump(), "n_clusters": len(cells.class_names), "seed": seed}
    path = cache / f"pool-clusters-seed{seed}.json"
    if path.exists():
        record = json.loads(path.read_text())
        if record["config"] == config and record["pool"] == split.pool.tolist():
            return record
    bar = tqdm(
        total=config["pretrain_epochs"] + config["cluster_epochs"],
        unit="epoch",
        file=sys.stderr,
        desc=f"clustering the pool of seed {seed}",
        leave=False,
    )
    with bar:
        result = compute_clustering(
            config,
            load_cells([cells.hashes[i] for i in split.pool], CHANNEL),
            cells.labels[split.pool],
            lambda **progress: bar.update(progress.get("epoch", 0) - bar.n),
        )
    record = {
        "config": config,
        "pool": split.pool.tolist(),
        "clusters": result["clusters"].tolist(),
        "metrics": result["metrics"],
    }
    write_json(path, record)
    return record


def _check_config(out: Path, config: dict) -> None:
    path = out / "config.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = {
            key: (before["settings"].get(key), value)
            for key, value in config["settings"].items()
            if before["settings"].get(key) != value
        }
        if changed:
            listed = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
            raise Invalid(f"{out} holds runs made with other settings ({listed}); rerun with those or use another --out")
        config["sizes"] = {**before["sizes"], **config["sizes"]}
    write_json(path, config)


def simulate(
    settings: SimulationSettings,
    out: Path,
    cases: list[str],
    budgets: list[float],
    seeds: list[int],
    cache: Path | None = None,
) -> list[str]:
    """Computes every case x seed x budget not yet in out/runs and rebuilds the tables and plots.
    `cache` (default out/cache) holds the cells' blobs and the pretrained models.
    Returns the names of the run records it computed (an empty list when all were done)."""
    out = Path(out)
    cache = Path(cache) if cache else out / "cache"
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        raise Invalid(f"unknown case {', '.join(unknown)}; the cases are {', '.join(CASES)}")
    missing = sorted({CASES[case].strategy for case in cases} - set(STRATEGIES))
    if missing:
        raise Invalid(
            f"strategy {', '.join(missing)} is not registered here (worker.ml.strategies); leave out the cases that use it"
        )
    if any(CASES[case].pretrained for case in cases) and not settings.pretrain_size:
        raise Invalid("the in-* cases need a pretraining part: give --pretrain-size")
    if any(not 0 < budget <= CEILING for budget in budgets):
        raise Invalid(f"budgets are percentages of the pool in (0, 100], got {budgets}")

    computed: list[str] = []
    with blob_store_under(cache) as store:
        cells = read_labeled_folder(Path(settings.data), Path(settings.labels) if settings.labels else None, store)
        splits = {seed: split_cells(cells, seed, settings) for seed in seeds}
        _check_config(
            out,
            {
                "settings": asdict(settings),
                "class_names": cells.class_names,
                "n_cells": len(cells.hashes),
                "sizes": {str(seed): split.sizes for seed, split in splits.items()},
                "machine": machine(),
            },
        )
        todo = [
            (seed, budget, case)
            for seed in seeds
            for budget in sorted(budgets)
            for case in cases
            if not _run_path(out, case, seed, budget).exists()
        ]
        rounds = sum(len(budget_plan(len(splits[seed].pool), budget, len(cells.class_names))) for seed, budget, _ in todo)
        with tqdm(total=rounds, unit="round", file=sys.stderr, desc="simulating") as bar:
            for seed, budget, case in todo:
                bar.set_description(f"{case} seed {seed} {budget:g}%")
                path = _run_path(out, case, seed, budget)
                record = _shared_ceiling(out, case, seed, budget) if budget >= CEILING else None
                if record is None:
                    start = None
                    if CASES[case].pretrained:
                        pretrained = _pretrained_checkpoint(cells, splits[seed], seed, settings, store, cache)
                        start = pretrained["checkpoint"]
                    clustering = (
                        _pool_clusters(cells, splits[seed], seed, store, cache)
                        if CASES[case].cold_start == "clusters"
                        else None
                    )
                    record = run_case(
                        cells,
                        splits[seed],
                        case,
                        seed,
                        budget,
                        settings,
                        store,
                        start,
                        lambda: bar.update(1),
                        clustering["clusters"] if clustering else None,
                    )
                    if clustering:
                        record["pool_clustering"] = {"config": clustering["config"], "metrics": clustering["metrics"]}
                    if CASES[case].pretrained:
                        record["pretraining"] = {k: v for k, v in pretrained.items() if k not in ("checkpoint", "settings")}
                else:
                    bar.update(len(record["plan"]))
                write_json(path, record)
                computed.append(path.name)
                write_outputs(out)
    write_outputs(out)
    return computed


def _shared_ceiling(out: Path, case: str, seed: int, budget: float) -> dict | None:
    """Another case's 100% run from the same start: the same computation, as nothing is selected."""
    for other, spec in CASES.items():
        path = _run_path(out, other, seed, budget)
        if other != case and spec.pretrained == CASES[case].pretrained and path.exists():
            record = json.loads(path.read_text())
            return {
                **record,
                "case": case,
                "strategy": CASES[case].strategy,
                "strategy_options": CASES[case].options,
                "copied_from": other,
            }
    return None


# --- tables and plots, rebuilt from the run records ---


def _load_records(out: Path) -> list[dict]:
    records = [json.loads(path.read_text()) for path in sorted((out / "runs").glob("*.json"))]
    order = {name: i for i, name in enumerate(CASES)}
    return sorted(records, key=lambda r: (order.get(r["case"], len(order)), r["case"], r["budget_pct"], r["seed"]))


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def _groups(records: list[dict]) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for record in records:
        groups.setdefault((record["case"], record["budget_pct"]), []).append(record)
    return groups


def write_outputs(out: Path) -> None:
    out = Path(out)
    records = _load_records(out)
    if not records:
        return
    write_csv(
        out / "steps.csv",
        ["case", "seed", "budget_pct", "step", "n_labels", "aca", "mca"],
        [
            {
                "case": r["case"],
                "seed": r["seed"],
                "budget_pct": f"{r['budget_pct']:g}",
                **{k: s[k] for k in ("step", "n_labels", "aca", "mca")},
            }
            for r in records
            for s in r["steps"]
        ],
    )
    write_csv(
        out / "diagnostics.csv",
        [
            "case",
            "seed",
            "budget_pct",
            "step",
            "n_selected",
            "hit_rate",
            "pool_error_rate",
            "pool_expected_error",
            "error_auroc",
        ],
        [
            {"case": r["case"], "seed": r["seed"], "budget_pct": f"{r['budget_pct']:g}", **d}
            for r in records
            for d in r["diagnostics"]
        ],
    )

    summary = []
    for (case, budget), group in _groups(records).items():
        aca, aca_std = _mean_std([r["steps"][-1]["aca"] for r in group])
        mca, mca_std = _mean_std([r["steps"][-1]["mca"] for r in group])
        summary.append(
            {
                "case": case,
                "budget_pct": budget,
                "n_seeds": len(group),
                "aca_mean": aca,
                "aca_std": aca_std,
                "mca_mean": mca,
                "mca_std": mca_std,
                "pretrained": group[0]["pretrained"],
                "cold_start": group[0].get("cold_start", "random"),
            }
        )
    header = ["case", "budget_pct", "n_seeds", "aca_mean", "aca_std", "mca_mean", "mca_std"]
    write_csv(
        out / "summary.csv",
        header,
        [{**{k: row[k] for k in header}, "budget_pct": f"{row['budget_pct']:g}"} for row in summary],
    )
    _write_reach(out / "reach.csv", summary)
    _write_confusion(out, records)
    sizes = records[0]["sizes"]
    _plot_label_efficiency(
        out / "label_efficiency.png", summary, f"pool {sizes['pool']}, test {sizes['test']} cells; mean ± sd over seeds"
    )


def _write_reach(path: Path, summary: list[dict]) -> None:
    rows = []
    for case in dict.fromkeys(row["case"] for row in summary):
        of_case = sorted((row for row in summary if row["case"] == case), key=lambda row: row["budget_pct"])
        ceiling = next((row["aca_mean"] for row in of_case if row["budget_pct"] >= CEILING), None)
        reached = None
        if ceiling is not None:
            reached = next(
                (row for row in of_case if row["budget_pct"] < CEILING and row["aca_mean"] >= ceiling - 0.01), None
            )
        rows.append(
            {
                "case": case,
                "ceiling_aca": ceiling,
                "smallest_budget_pct_within_1pt": f"{reached['budget_pct']:g}" if reached else "",
                "aca_there": reached["aca_mean"] if reached else "",
            }
        )
    write_csv(path, ["case", "ceiling_aca", "smallest_budget_pct_within_1pt", "aca_there"], rows)


def _row_normalised(confusion) -> np.ndarray:
    confusion = np.asarray(confusion, dtype=np.float64)
    return confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)


def _write_confusion(out: Path, records: list[dict]) -> None:
    """confusion.csv: per case and budget, the final step's confusion, row-normalised, mean over seeds;
    confusion.png: those at the largest budget below 100% (where the cases differ), one panel per case."""
    class_names = records[0]["class_names"]
    means = {
        key: np.mean([_row_normalised(r["final_metrics"]["confusion"]) for r in group], axis=0)
        for key, group in _groups(records).items()
    }
    write_csv(
        out / "confusion.csv",
        ["case", "budget_pct", "true_class", *class_names],
        [
            {"case": case, "budget_pct": f"{budget:g}", "true_class": name, **dict(zip(class_names, matrix[i]))}
            for (case, budget), matrix in means.items()
            for i, name in enumerate(class_names)
        ],
    )
    budgets = sorted({budget for _, budget in means})
    shown = max((b for b in budgets if b < CEILING), default=budgets[-1])
    panels = [(case, matrix) for (case, budget), matrix in means.items() if budget == shown]
    plt = pyplot()
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    short = [name[:6] for name in class_names]
    for ax, (case, matrix) in zip(axes.flat, panels):
        ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(
                j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=7, color="white" if value > 0.5 else "black"
            )
        ax.set_title(case, fontsize=9)
        ax.set_xticks(range(len(short)), short, rotation=90, fontsize=7)
        ax.set_yticks(range(len(short)), short, fontsize=7)
    fig.suptitle(f"test confusion (% of each true class, rows) at {shown:g}% of the pool, mean over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)


def _plot_label_efficiency(path: Path, summary: list[dict], subtitle: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    budgets = sorted({row["budget_pct"] for row in summary if row["budget_pct"] < CEILING})
    for ax, metric in zip(axes, ("aca", "mca")):
        for case in dict.fromkeys(row["case"] for row in summary):
            rows = sorted(
                (r for r in summary if r["case"] == case and r["budget_pct"] < CEILING), key=lambda r: r["budget_pct"]
            )
            if rows:
                ax.errorbar(
                    [r["budget_pct"] for r in rows],
                    [100 * r[f"{metric}_mean"] for r in rows],
                    yerr=[100 * (r[f"{metric}_std"] or 0) for r in rows],
                    marker="o",
                    capsize=3,
                    label=case,
                    linestyle="--" if rows[0]["pretrained"] else "-." if rows[0]["cold_start"] != "random" else "-",
                )
        for pretrained, color in ((False, "black"), (True, "grey")):
            ceiling = next((r for r in summary if r["budget_pct"] >= CEILING and r["pretrained"] == pretrained), None)
            if ceiling is not None:
                ax.axhline(
                    100 * ceiling[f"{metric}_mean"],
                    color=color,
                    linestyle=":",
                    label=f"100% of the pool{' (pretrained)' if pretrained else ''}",
                )
        if budgets:
            ax.set_xscale("log")
            ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
            ax.minorticks_off()
        ax.set_xlabel("labeled share of the pool (%)")
        ax.set_ylabel(f"{metric.upper()} on the test split (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Label efficiency: {subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
