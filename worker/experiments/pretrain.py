"""Initial learning (thesis 3.2.2): train the network on a small labeled set that a project, or
the simulator's IN-* cases, then start from (new head, early layers frozen: worker.rounds).

Also the one reader of a labeled folder outside a project, shared by `xal pretrain` and
`xal simulate`: it goes through the import code (backend.core.readers.files_from_folder),
so both understand exactly the layouts an import does. No database here."""

import sys
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backend.core.blobs import BlobStore
from backend.core.errors import Invalid
from backend.core.readers import files_from_folder
from worker.ml.metrics import classification_metrics
from worker.ml.network import ParallelResidualNet
from worker.ml.training import TrainingConfig, predict_proba, save_checkpoint, stratified_holdout, train_classifier

CHANNEL = "luminance"  # of cells read from a folder outside any project (a project's default too)


@dataclass
class LabeledCells:
    hashes: list[str]  # blob keys of the cell images
    labels: np.ndarray  # (N,) int, positions in class_names
    class_names: list[str]

    def subset(self, indices) -> "LabeledCells":
        indices = np.asarray(indices, dtype=np.int64)
        return LabeledCells([self.hashes[i] for i in indices], self.labels[indices], self.class_names)

    def positions(self, names: Collection[str]) -> list[int]:
        """The positions of the classes `names` (any case); Invalid for a name that is not a class."""
        lookup = {name.casefold(): i for i, name in enumerate(self.class_names)}
        unknown = sorted(name for name in names if name.casefold() not in lookup)
        if unknown:
            raise Invalid(f"no class {', '.join(unknown)} here; the classes are {', '.join(self.class_names)}")
        return [lookup[name.casefold()] for name in names]

    def excluding(self, names: Collection[str]) -> "LabeledCells":
        """Without the cells of the classes `names`, the remaining classes renumbered in order."""
        dropped = self.positions(names)
        kept = [i for i in range(len(self.class_names)) if i not in dropped]
        subset = self.subset(np.flatnonzero(np.isin(self.labels, kept)))
        renumbered = np.searchsorted(kept, subset.labels)
        return LabeledCells(subset.hashes, renumbered.astype(np.int64), [self.class_names[i] for i in kept])


def read_labeled_folder(folder: Path, labels_csv: Path | None, store: BlobStore) -> LabeledCells:
    """Every cell of the folder into `store`, with its class; classes in sorted order.

    Each cell needs a class (the ground truth is the oracle); a cell whose bytes appear
    twice counts once, as an import would keep it once."""
    files = files_from_folder(folder, labels_csv)
    hashes, names, unlabeled = [], [], []
    seen = set()
    for file in tqdm(files, total=len(files), unit="cell", file=sys.stderr, desc=f"reading {folder}"):
        if not file.reference_class:
            unlabeled.append(file.filename)
            continue
        key = store.put(file.data)
        if key not in seen:
            seen.add(key)
            hashes.append(key)
            names.append(file.reference_class)
    if unlabeled:
        raise Invalid(f"{len(unlabeled)} cells of {folder} have no class (e.g. {unlabeled[0]}); every cell needs one here")
    class_names = sorted(set(names))
    if len(class_names) < 2:
        raise Invalid(f"{folder} has {len(class_names)} class; a classifier needs at least 2")
    labels = np.array([class_names.index(name) for name in names], dtype=np.int64)
    return LabeledCells(hashes, labels, class_names)


def stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `size` items (all when there are fewer), each class in proportion."""
    if size >= len(labels):
        return np.arange(len(labels))
    return stratified_holdout(labels, size / len(labels), rng)[1]


@dataclass
class Pretrained:
    checkpoint: bytes
    class_names: list[str]
    metrics: dict  # on the held-out part (worker.ml.metrics.classification_metrics)
    training: dict  # as a round's model version keeps it

    @property
    def record(self) -> dict:
        return {"class_names": self.class_names, "metrics": self.metrics, "training": self.training}


def pretrain(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    config: TrainingConfig,
    device,
    test_fraction: float = 0.2,
    progress: Callable[[int, int], None] | None = None,
) -> Pretrained:
    """Train a fresh network on a stratified (1 - test_fraction) of the cells (itself holding out
    config.val_fraction to choose the checkpoint) and measure it on the rest."""
    labels = np.asarray(labels, dtype=np.int64)
    train, test = stratified_holdout(labels, test_fraction, np.random.default_rng(config.seed))
    torch.manual_seed(config.seed)
    trained = train_classifier(ParallelResidualNet(len(class_names)), images[train], labels[train], config, device, progress)
    metrics = {}
    if len(test):
        predicted = predict_proba(trained.model, images[test], device, config.batch_size).argmax(1)
        metrics = {**classification_metrics(labels[test], predicted, len(class_names)), "class_names": class_names}
    training = {
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "best_val_loss": trained.best_val_loss,
        "history": trained.history,
        "n_labels": int(len(train)),
        "n_held_out": int(len(test)),
        "seconds": trained.seconds,
        "config": asdict(config),
    }
    return Pretrained(save_checkpoint(trained.model), class_names, metrics, training)
