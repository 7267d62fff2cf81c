"""Contrastive pretraining without labels (worker.ml.pretext) on real cells."""

import numpy as np
import torch

from tests.ml.test_training import bright_or_dark_cells
from worker.ml.network import ParallelResidualNet, freeze_early_layers, replace_head
from worker.ml.pretext import PretextConfig, embed_cells, nt_xent, pretrain_contrastive, random_views
from worker.ml.training import load_checkpoint, save_checkpoint

CPU = torch.device("cpu")


def test_views_are_images_in_range_and_differ_from_each_other():
    images, _ = bright_or_dark_cells(8)
    batch = torch.from_numpy(images).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    a, b = random_views(batch, PretextConfig(), generator), random_views(batch, PretextConfig(), generator)
    assert a.shape == batch.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, b)


def test_the_loss_is_low_when_partners_match_and_high_when_they_do_not():
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn(16, 8), 0.2) < nt_xent(z, torch.randn(16, 8), 0.2)


def test_pretraining_lowers_the_loss_and_gives_a_start_model():
    images, labels = bright_or_dark_cells(64)
    result = pretrain_contrastive(images, PretextConfig(epochs=3, batch_size=32, bf16=True), CPU, n_classes=2)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 3 and np.isfinite(losses).all() and losses[-1] < losses[0]
    features = embed_cells(result.model, images, CPU)
    assert features.shape == (64, 128)
    # the two kinds of cell lie apart in the pretrained features: nearest neighbours share a kind
    distances = np.linalg.norm(features[:, None] - features[None], axis=2) + np.eye(64) * 1e9
    assert (labels[distances.argmin(1)] == labels).mean() > 0.9
    # a checkpoint a project starts from: new head, early layers frozen
    model = freeze_early_layers(replace_head(load_checkpoint(save_checkpoint(result.model)), 6))
    assert isinstance(model, ParallelResidualNet) and model.head.out_features == 6
