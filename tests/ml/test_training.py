import io

import numpy as np
import pytest
import torch

from worker.ml.network import ParallelResidualNet, freeze_early_layers
from worker.ml.training import (
    TrainingConfig,
    load_checkpoint,
    predict_proba,
    recompute_batch_norm_statistics,
    resolve_device,
    rotate_batch,
    save_checkpoint,
    stratified_holdout,
    train_classifier,
)
from worker.ml.wavelets import haar_torch

CPU = torch.device("cpu")


def bright_or_dark_cells(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two trivially separable classes: a dim and a bright disc on noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    yy, xx = np.mgrid[:112, :112]
    disc = ((yy - 56) ** 2 + (xx - 56) ** 2 < 30**2).astype(np.float32)
    images = 0.1 * rng.random((n, 112, 112)).astype(np.float32) + disc * np.where(labels, 0.8, 0.2)[:, None, None]
    return images.astype(np.float32), labels


def fresh_model(n_classes: int = 2) -> ParallelResidualNet:
    torch.manual_seed(0)
    return ParallelResidualNet(n_classes)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_resolve_device_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_holdout_is_stratified_and_leaves_every_class_in_training():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3 + [3])
    train, validation = stratified_holdout(labels, 0.2, np.random.default_rng(0))
    assert len(validation) == round(0.2 * len(labels))
    assert sorted(np.concatenate([train, validation])) == list(range(len(labels)))
    held_out = np.bincount(labels[validation], minlength=4)
    assert held_out[0] == 10 and held_out[1] == 6 and held_out[3] == 0
    assert set(labels[train]) == {0, 1, 2, 3}


def test_holdout_keeps_at_least_one_from_five_and_none_below():
    train, validation = stratified_holdout(np.array([0, 0, 1, 1, 1]), 0.2, np.random.default_rng(0))
    assert len(validation) == 1 and len(train) == 4
    train, validation = stratified_holdout(np.array([0, 1, 1, 0]), 0.2, np.random.default_rng(0))
    assert len(validation) == 0 and len(train) == 4


def test_rotation_moves_in_18_degree_steps():
    image = torch.rand(1, 1, 112, 112, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rotate_batch(image, torch.tensor([0])), image)
    quarter = rotate_batch(image, torch.tensor([5]))  # 90 degrees: an exact pixel permutation
    assert any(torch.allclose(quarter, torch.rot90(image, k, dims=(2, 3)), atol=1e-4) for k in (1, -1))
    partial = rotate_batch(image, torch.tensor([1]))
    assert partial[0, 0, 0, 0] == 0  # a corner rotated in from outside
    assert not torch.allclose(partial, image, atol=0.1)


def test_training_learns_and_restores_the_best_checkpoint():
    images, labels = bright_or_dark_cells(40)
    seen = []
    config = TrainingConfig(max_epochs=6, patience=2, batch_size=16)
    result = train_classifier(fresh_model(), images, labels, config, CPU, progress=lambda e, m: seen.append((e, m)))
    assert seen == [(e, 6) for e in range(1, result.epochs_run + 1)]
    assert [h["epoch"] for h in result.history] == list(range(1, result.epochs_run + 1))
    val_losses = [h["val_loss"] for h in result.history]
    assert result.best_val_loss == min(val_losses) == val_losses[result.best_epoch - 1]
    assert result.epochs_run == config.max_epochs or result.epochs_run - result.best_epoch == config.patience
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == config.lr and all(a > b for a, b in zip(lrs, lrs[1:]))  # cosine decay
    # The returned model is the best epoch's: its validation loss is the recorded best.
    _, validation = stratified_holdout(labels, config.val_fraction, np.random.default_rng(config.seed))
    probabilities = predict_proba(result.model, images[validation], CPU)
    loss = -np.log(probabilities[np.arange(len(validation)), labels[validation]]).mean()
    assert loss == pytest.approx(result.best_val_loss, rel=1e-4)
    assert result.history[result.best_epoch - 1]["val_acc"] == 1.0
    assert result.seconds > 0


def test_without_a_patience_every_epoch_runs_and_the_best_is_kept():
    images, labels = bright_or_dark_cells(40)
    # lr 0: the weights never change, so no epoch improves on the first one
    frozen = dict(max_epochs=6, batch_size=16, lr=0.0, lr_decay="none")
    stopped = train_classifier(fresh_model(), images, labels, TrainingConfig(patience=2, **frozen), CPU)
    assert stopped.epochs_run == 3 and stopped.best_epoch == 1
    result = train_classifier(fresh_model(), images, labels, TrainingConfig(patience=None, **frozen), CPU)
    assert result.epochs_run == 6 and result.best_epoch == 1
    assert TrainingConfig().patience is None  # the default


def test_tiny_labeled_sets_validate_on_the_training_set():
    images, labels = bright_or_dark_cells(3)
    result = train_classifier(fresh_model(), images, labels, TrainingConfig(max_epochs=1), CPU)
    assert result.epochs_run == 1 and np.isfinite(result.best_val_loss)


def test_labels_outside_the_model_classes_are_rejected():
    images, labels = bright_or_dark_cells(6)
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(fresh_model(), images, labels + 1, TrainingConfig(max_epochs=1), CPU)


def test_predict_proba_gives_distributions_independent_of_batch_size():
    images, _ = bright_or_dark_cells(10)
    model = fresh_model(3)
    probabilities = predict_proba(model, images, CPU, batch_size=4)
    assert probabilities.shape == (10, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(predict_proba(model, images, CPU, batch_size=10), probabilities, atol=1e-5)
    assert predict_proba(model, images[:0], CPU).shape == (0, 3)


def test_checkpoint_round_trip_gives_identical_outputs():
    images, labels = bright_or_dark_cells(12)
    model = train_classifier(fresh_model(5), images, labels, TrainingConfig(max_epochs=1), CPU).model
    restored = load_checkpoint(save_checkpoint(model))
    assert isinstance(restored, ParallelResidualNet) and restored.n_classes == 5 and not restored.training
    x = torch.randn(4, 2, 56, 56)
    model.eval()
    assert torch.equal(restored(x), model(x))


def test_checkpoint_keeps_frozen_early_layers_frozen():
    restored = load_checkpoint(save_checkpoint(freeze_early_layers(fresh_model(3))))
    assert restored.early_layers_frozen
    assert not restored.branch_d.early.conv.weight.requires_grad and restored.branch_d.late.conv1.weight.requires_grad
    assert not load_checkpoint(save_checkpoint(fresh_model(3))).early_layers_frozen


def test_checkpoint_of_another_architecture_version_is_refused():
    buffer = io.BytesIO()
    torch.save(
        {"architecture": "parallel-residual-net", "architecture_version": 999, "n_classes": 2, "state_dict": {}}, buffer
    )
    with pytest.raises(ValueError, match="version 999"):
        load_checkpoint(buffer.getvalue())


def test_class_weights_make_each_present_class_weigh_alike():
    from worker.ml.training import class_weights

    weights = class_weights(np.array([0, 0, 0, 1]), 3).numpy()
    assert np.allclose(weights, [4 / 6, 2.0, 0.0])  # 3 x 4/6 = 1 x 2: equal totals; class 2 absent


def test_a_fixed_validation_set_is_used_whole_and_no_label_is_held_out():
    images, labels = bright_or_dark_cells(20)
    validation = bright_or_dark_cells(12, seed=1)
    torch.manual_seed(0)
    trained = train_classifier(
        ParallelResidualNet(2), images, labels, TrainingConfig(max_epochs=2, batch_size=8), CPU, validation=validation
    )
    accuracies = [h["val_acc"] for h in trained.history]
    assert all(round(a * 12) == a * 12 for a in accuracies)  # twelfths: judged on the 12 validation cells


def test_bf16_training_learns_the_same_task():
    images, labels = bright_or_dark_cells(40)
    torch.manual_seed(0)
    config = TrainingConfig(max_epochs=6, batch_size=8, precision="bf16", lr_decay="none")
    trained = train_classifier(ParallelResidualNet(2), images, labels, config, CPU)
    test_images, test_labels = bright_or_dark_cells(40, seed=3)
    assert (predict_proba(trained.model, test_images, CPU, precision="bf16").argmax(1) == test_labels).mean() > 0.9
    with pytest.raises(ValueError):
        train_classifier(ParallelResidualNet(2), images, labels, TrainingConfig(precision="fp16"), CPU)


def test_batch_norm_statistics_are_those_of_all_cells_even_when_they_come_grouped_by_class():
    # cells in import order, one class folder after the other: a dim class, then a bright one
    rng = np.random.default_rng(0)
    dim = rng.uniform(0.0, 0.2, (256, 112, 112)).astype(np.float32)
    bright = rng.uniform(0.6, 1.0, (256, 112, 112)).astype(np.float32)
    images = torch.from_numpy(np.concatenate([dim, bright])).unsqueeze(1)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2))

    recompute_batch_norm_statistics(model, images, "cpu", batch_size=64)

    coefficients = haar_torch(images)
    batch_norm = model[0]
    assert torch.allclose(batch_norm.running_mean, coefficients.mean((0, 2, 3)), rtol=0.02, atol=1e-3)
    # the whole set's variance, not the within-class one (about 17x smaller for the approximation)
    assert torch.allclose(batch_norm.running_var, coefficients.var((0, 2, 3)), rtol=0.1)
