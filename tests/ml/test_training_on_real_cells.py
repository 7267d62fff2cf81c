"""Train on a few real I3A cells and classify cells the model never saw."""

import time

import numpy as np
import pytest
import torch

from backend.core.images import load_cell
from conftest import balanced_sample
from worker.ml.metrics import classification_metrics
from worker.ml.network import ParallelResidualNet
from worker.ml.training import TrainingConfig, predict_proba, train_classifier

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
# Consecutive ids mostly come from one specimen: 20 training cells of a class
# taken in one run generalised to other ids at chance level here. So both sets
# are spread over the first 500 cells of every class (Golgi has 587), 4 training
# and 6 held-out cells per class from each stretch of 100.
STRETCHES = range(0, 500, 100)


def load(i3a_dir, rows: list[dict], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([load_cell((i3a_dir / row["image_path"]).read_bytes()) for row in rows])
    return images, np.array([classes.index(row["pattern"]) for row in rows])


@pytest.fixture(scope="module")
def real_cells(i3a_dir, i3a_rows):
    classes = sorted({row["pattern"] for row in i3a_rows})
    train_rows = [row for start in STRETCHES for row in balanced_sample(i3a_rows, 4, start)]
    test_rows = [row for start in STRETCHES for row in balanced_sample(i3a_rows, 6, start + 50)]
    assert not {row["image_id"] for row in train_rows} & {row["image_id"] for row in test_rows}
    return classes, load(i3a_dir, train_rows, classes), load(i3a_dir, test_rows, classes)


def test_real_cells_load_as_network_input(real_cells):
    classes, (train_images, train_labels), (test_images, test_labels) = real_cells
    assert len(classes) == 6
    assert train_images.shape == (120, 112, 112) and test_images.shape == (180, 112, 112)
    assert np.bincount(train_labels).tolist() == [20] * 6 and np.bincount(test_labels).tolist() == [30] * 6
    assert train_images.dtype == np.float32 and 0.0 <= train_images.min() and train_images.max() <= 1.0


def test_twenty_cells_per_class_classify_unseen_cells_well_above_chance(real_cells):
    _, (train_images, train_labels), (test_images, test_labels) = real_cells
    torch.manual_seed(0)
    config = TrainingConfig(max_epochs=12, patience=5, seed=0)
    started = time.perf_counter()
    result = train_classifier(ParallelResidualNet(6), train_images, train_labels, config, CPU)
    predicted = predict_proba(result.model, test_images, CPU).argmax(axis=1)
    metrics = classification_metrics(test_labels, predicted, n_classes=6)
    print(f"trained {result.epochs_run} epochs in {time.perf_counter() - started:.1f} s; held-out ACA {metrics['aca']:.3f}")
    # Chance is 1/6 = 0.17. Measured here over 10 seeds/splits: 0.49-0.64.
    assert metrics["aca"] > 0.40
    assert sum(accuracy > 0 for accuracy in metrics["per_class_accuracy"]) >= 4


def test_training_is_deterministic_for_a_fixed_seed(real_cells):
    _, (train_images, train_labels), _ = real_cells
    images, labels = train_images[:48], train_labels[:48]

    def train(seed: int, global_noise: int, epochs: int = 2):
        torch.manual_seed(0)
        model = ParallelResidualNet(6)
        torch.manual_seed(global_noise)  # training must draw only from its own seed
        np.random.seed(global_noise)
        config = TrainingConfig(max_epochs=epochs, batch_size=16, seed=seed)  # several augmented steps
        return train_classifier(model, images, labels, config, CPU)

    first, second = train(seed=3, global_noise=1), train(seed=3, global_noise=2)
    assert first.history == second.history
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)
    other_seed = train(seed=4, global_noise=1, epochs=1)
    assert other_seed.history[0]["train_loss"] != first.history[0]["train_loss"]
