"""Initial learning (thesis 3.2.2): train the network on a small labeled set that a project, or
the simulator's IN-* cases (worker.experiments.per_budget), then start from (new head, early
layers frozen: worker.rounds). `xal pretrain` reads its labeled folder with
worker.experiments.cells.read_labeled_folder. No database here."""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from worker.ml.metrics import classification_metrics
from worker.ml.network import ParallelResidualNet
from worker.ml.training import TrainingConfig, predict_proba, save_checkpoint, stratified_holdout, train_classifier


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
