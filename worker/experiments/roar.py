"""`xal roar`: ROAR and KAR (thesis 2.3.3, 4.2.6, Fig. 43; Hooker et al. 2019), which relevance
method ranks the pixels the network needs best. No database.

A base model trained on the original training cells explains its predicted class on every
training and test cell with each method ("random": a seeded random ranking per image). For each
method, mode and fraction x (% of each image's pixels), the training and test cells are degraded
and a fresh model (same initialisation, same config) is trained and tested on them:

- ROAR replaces the x% most relevant pixels of each image with the image's mean;
- KAR replaces the x% least relevant ones (keeps the top 100 - x%).

x counts the pixels *replaced* in both modes, as on the thesis's "degradation level" axis and in
Hooker et al., so x = 0 is the original data for every method and mode: the base model is that
run, trained once. "Most relevant" ranks by the signed relevance, the evidence *for* the
explained class, as Hooker et al.'s code (top-k of the raw map) and LRP's most-relevant-first do;
pixels that speak against the class rank last. Ties, such as the four pixels of a Haar 2x2 block
(`relevance.project_to_image`), go in raster order.

`out` holds config.json (the settings a rerun must repeat), base_model.pt and base.json (the base
model and its test scores, so a resumed run explains with the very same model), roar.csv (COLUMNS:
one row per mode x method x fraction in %, test ACA and MCA in [0, 1], seconds of training and
testing; appended as each finishes, a rerun skips those), roar_kar.png (accuracy vs fraction, a
panel per mode, a line per method) and recommendation.json (see `recommend`), both rebuilt at the end.
"""

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backend.core.errors import Invalid
from backend.core.images import load_cell
from backend.core.readers import files_from_folder
from worker.ml import relevance
from worker.ml.metrics import classification_metrics
from worker.ml.network import ParallelResidualNet
from worker.ml.training import (
    TrainingConfig,
    load_checkpoint,
    predict_proba,
    save_checkpoint,
    stratified_holdout,
    train_classifier,
)

METHODS = ("random", "gradient", "lrp-epsilon", "deeptaylor")
MODES = ("roar", "kar")
COLUMNS = ("mode", "method", "fraction", "aca", "mca", "seconds")
# Okabe-Ito; random in black, the reference a method must beat.
COLOURS = {"random": "#000000", "gradient": "#009E73", "lrp-epsilon": "#0072B2", "deeptaylor": "#D55E00"}


def relevance_order(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps -> (N, H*W) flat pixel indices, most relevant (largest signed value) first, ties in raster order."""
    return np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable")


def replaced_pixels(maps: np.ndarray, fraction: float, mode: str) -> np.ndarray:
    """(N, H, W) bool: the round(fraction x H x W) pixels of each image that `mode` replaces."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    n_pixels = maps.shape[1] * maps.shape[2]
    count = round(fraction * n_pixels)
    order = relevance_order(maps)
    chosen = order[:, :count] if mode == "roar" else order[:, n_pixels - count :]
    mask = np.zeros((len(maps), n_pixels), dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask.reshape(maps.shape)


def degrade(images: np.ndarray, maps: np.ndarray, fraction: float, mode: str) -> np.ndarray:
    """The images with the pixels `replaced_pixels` picks set to each image's own (original) mean."""
    if images.shape != maps.shape:
        raise ValueError(f"images and maps differ in shape: {images.shape} vs {maps.shape}")
    means = images.mean(axis=(1, 2), dtype=np.float64, keepdims=True)
    return np.where(replaced_pixels(maps, fraction, mode), means, images).astype(np.float32)


def random_maps(shape: tuple, seed: int) -> np.ndarray:
    """A random ranking of the pixels of each image, the baseline every method must beat."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@dataclass
class Cells:
    images: np.ndarray  # (N, 112, 112) float32
    labels: np.ndarray  # (N,) int64


@dataclass
class Scores:
    aca: float
    mca: float
    seconds: float  # training plus testing


def train_and_test(
    train: Cells, test: Cells, n_classes: int, config: TrainingConfig, device
) -> tuple[ParallelResidualNet, Scores]:
    """A fresh model (the same initial weights every time, so runs differ only by their data) trained and tested."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = train_classifier(ParallelResidualNet(n_classes), train.images, train.labels, config, device).model
    predicted = predict_proba(model, test.images, device, config.batch_size).argmax(1)
    metrics = classification_metrics(test.labels, predicted, n_classes)
    return model, Scores(metrics["aca"], metrics["mca"], time.perf_counter() - started)


def method_maps(method: str, model, images: np.ndarray, device, seed: int) -> np.ndarray:
    if method == "random":
        return random_maps(images.shape, seed)
    return relevance.relevance_maps(model, images, method, device).image_maps


def check_choices(methods, fractions) -> None:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise Invalid(f"unknown or no relevance method {', '.join(unknown)}; expected some of {', '.join(METHODS)}")
    if not fractions or any(not 0 <= x < 100 for x in fractions):
        raise Invalid(f"fractions are % of the pixels, each in [0, 100); got {', '.join(map(str, fractions)) or 'none'}")


def remove_and_retrain(
    train: Cells,
    test: Cells,
    n_classes: int,
    base_model,
    base_scores: Scores,
    methods,
    fractions,
    config: TrainingConfig,
    device,
    done=frozenset(),
    on_row=None,
) -> list[dict]:
    """The rows (COLUMNS; fraction in %) of every mode x method x fraction not in `done`, a set
    of (mode, method, fraction). The 0% rows are the base model's scores. `on_row` sees each row
    as soon as it is computed."""
    check_choices(methods, fractions)
    rows = []

    def emit(mode, method, fraction, scores: Scores):
        row = {"mode": mode, "method": method, "fraction": fraction, **asdict(scores)}
        rows.append(row)
        if on_row is not None:
            on_row(row)

    todo = [(mode, method, x) for method in methods for x in fractions for mode in MODES if (mode, method, x) not in done]
    for mode, method, x in todo:
        if x == 0:
            emit(mode, method, 0, base_scores)
    retrainings = [key for key in todo if key[2] != 0]
    with tqdm(total=len(retrainings), unit="retraining", file=sys.stderr, desc="ROAR/KAR") as bar:
        for method in methods:
            wanted = [key for key in retrainings if key[1] == method]
            if not wanted:
                continue
            bar.set_postfix_str(f"{method} maps")
            both = np.concatenate([train.images, test.images])
            maps = method_maps(method, base_model, both, device, config.seed)
            train_maps, test_maps = maps[: len(train.images)], maps[len(train.images) :]
            for mode, _, x in wanted:
                bar.set_postfix_str(f"{mode} {method} {x}%")
                degraded_train = Cells(degrade(train.images, train_maps, x / 100, mode), train.labels)
                degraded_test = Cells(degrade(test.images, test_maps, x / 100, mode), test.labels)
                _, scores = train_and_test(degraded_train, degraded_test, n_classes, config, device)
                emit(mode, method, x, scores)
                bar.update()
    return rows


def recommend(rows: list[dict]) -> dict:
    """The relevance method (random excluded) with the highest score = mean KAR ACA - mean ROAR ACA
    over the fractions > 0 that every method has in both modes: a good ranking loses much accuracy
    when its top pixels go (ROAR) and little when only they stay (KAR). Both means weigh alike, so a
    method cannot win on one mode alone. `beats_random` says whether it also outscores random."""
    methods = sorted({row["method"] for row in rows}, key=METHODS.index)
    have = {(row["mode"], row["method"]): set() for row in rows}
    for row in rows:
        have[(row["mode"], row["method"])].add(int(row["fraction"]))
    common = set.intersection(*have.values()) - {0} if have else set()
    if not common or any((mode, method) not in have for mode in MODES for method in methods):
        return {"method": None, "reason": "no fraction > 0 computed for every method in both modes"}

    def mean(mode, method):
        return float(
            np.mean(
                [
                    float(r["aca"])
                    for r in rows
                    if (r["mode"], r["method"]) == (mode, method) and int(r["fraction"]) in common
                ]
            )
        )

    scores = {m: {"roar_aca": mean("roar", m), "kar_aca": mean("kar", m)} for m in methods}
    for entry in scores.values():
        entry["score"] = entry["kar_aca"] - entry["roar_aca"]
    candidates = [m for m in methods if m != "random"]
    if not candidates:
        return {"method": None, "reason": "only random was evaluated", "scores": scores}
    best = max(candidates, key=lambda m: scores[m]["score"])
    return {
        "method": best,
        "score": scores[best]["score"],
        "beats_random": scores[best]["score"] > scores["random"]["score"] if "random" in scores else None,
        "rule": "highest mean KAR ACA - mean ROAR ACA over the fractions (%) below; random excluded",
        "fractions": sorted(common),
        "scores": scores,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    titles = {
        "roar": "ROAR: most relevant pixels replaced\n(a steeper drop = a better method)",
        "kar": "KAR: least relevant pixels replaced\n(higher = a better method)",
    }
    for ax, mode in zip(axes, MODES):
        for method in METHODS:
            points = sorted(
                (int(r["fraction"]), float(r["aca"])) for r in rows if (r["mode"], r["method"]) == (mode, method)
            )
            if points:
                xs, ys = zip(*points)
                ax.plot(
                    xs, ys, marker="o", color=COLOURS[method], label=method, linestyle="--" if method == "random" else "-"
                )
        ax.set_title(titles[mode], fontsize=10)
        ax.set_xlabel("pixels replaced by the image mean (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (ACA) after retraining")
    axes[1].legend(title="ranking")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclass
class RoarSettings:
    """What a rerun into the same folder must repeat (config.json)."""

    data: str
    labels: str | None
    train_size: int
    test_size: int
    max_epochs: int
    seed: int
    batch_size: int = TrainingConfig.batch_size

    def training_config(self) -> TrainingConfig:
        # patience 5: the committed ROAR/KAR runs were made with it (the old TrainingConfig default)
        return TrainingConfig(max_epochs=self.max_epochs, patience=5, batch_size=self.batch_size, seed=self.seed)


def read_split(settings: RoarSettings) -> tuple[Cells, Cells, list[str]]:
    """A stratified sample of train_size + test_size cells of the labeled folder, split stratified."""
    files = files_from_folder(Path(settings.data), Path(settings.labels) if settings.labels else None)
    data, names = [], []
    for file in tqdm(files, total=len(files), unit="cell", file=sys.stderr, desc=f"reading {settings.data}"):
        if not file.reference_class:
            raise Invalid(f"{file.filename} has no class; every cell needs one here")
        data.append(file.data)
        names.append(file.reference_class)
    class_names = sorted(set(names))
    if len(class_names) < 2:
        raise Invalid(f"{settings.data} has {len(class_names)} class; a classifier needs at least 2")
    labels = np.array([class_names.index(name) for name in names], dtype=np.int64)
    total = settings.train_size + settings.test_size
    if settings.train_size < 1 or settings.test_size < 1 or total > len(labels):
        raise Invalid(f"--train-size and --test-size must be positive and sum to at most {len(labels)}, the cells there")
    rng = np.random.default_rng(settings.seed)
    chosen = np.arange(len(labels)) if total == len(labels) else stratified_holdout(labels, total / len(labels), rng)[1]
    train, test = stratified_holdout(labels[chosen], settings.test_size / total, rng)

    def cells(indices) -> Cells:
        picked = chosen[indices]
        return Cells(np.stack([load_cell(data[i]) for i in picked]), labels[picked])

    return cells(train), cells(test), class_names


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{**row, "fraction": int(row["fraction"])} for row in csv.DictReader(f)]


def run_roar(settings: RoarSettings, out: Path, methods, fractions, device) -> dict:
    """Computes what `out` lacks, rebuilds the plot and the recommendation and returns the latter."""
    check_choices(methods, fractions)
    out.mkdir(parents=True, exist_ok=True)
    config_path, csv_path = out / "config.json", out / "roar.csv"
    if config_path.exists():
        stored = json.loads(config_path.read_text())
        if stored != asdict(settings):
            raise Invalid(f"{out} holds a run with other settings ({stored}); use another --out, or the same settings")
    elif csv_path.exists():
        raise Invalid(f"{csv_path} exists without a config.json; use another --out")
    config_path.write_text(json.dumps(asdict(settings), indent=2))

    done = {(row["mode"], row["method"], row["fraction"]) for row in read_rows(csv_path)}
    missing = [(mode, m, x) for m in methods for x in fractions for mode in MODES if (mode, m, x) not in done]
    if missing:
        train, test, class_names = read_split(settings)
        config = settings.training_config()
        model_path, base_path = out / "base_model.pt", out / "base.json"
        if model_path.exists() and base_path.exists():
            base_model, base_scores = load_checkpoint(model_path.read_bytes()), Scores(**json.loads(base_path.read_text()))
        else:
            print(f"training the base model on {len(train.labels)} cells", file=sys.stderr)
            base_model, base_scores = train_and_test(train, test, len(class_names), config, device)
            model_path.write_bytes(save_checkpoint(base_model))
            base_path.write_text(json.dumps(asdict(base_scores)))
        new_file = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new_file:
                writer.writeheader()

            def append(row):
                writer.writerow(row)
                f.flush()

            remove_and_retrain(
                train, test, len(class_names), base_model, base_scores, methods, fractions, config, device, done, append
            )
    rows = read_rows(csv_path)
    plot(rows, out / "roar_kar.png")
    recommendation = recommend(rows)
    (out / "recommendation.json").write_text(json.dumps(recommendation, indent=2))
    return recommendation
