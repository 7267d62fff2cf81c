"""Initial learning without labels: contrastive pretraining of the parallel networks on the pool.

A lab always has its unlabeled pool before the first label. SimCLR (Chen et al. 2020) trains the
network's trunk (`ParallelResidualNet.embed`, everything before the linear head) so that two
random views of the same cell land close together and views of different cells apart (NT-Xent
loss on a small projection head that is thrown away afterwards). The views are what a
pathologist's labels do not depend on: any rotation and a mirror image (cells have no
orientation), a crop and a zoom of +-15%, brightness and contrast (staining and exposure vary
between slides), and sensor noise. A rotation-prediction pretext would not fit these cells: a
cell turned by 90 degrees is still a valid cell, so the angle is not learnable.

The result is a checkpoint like any other; a project (or the simulator) starts from it as from a
supervised start model: new head, early layers frozen (worker.rounds).
"""

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .network import FEATURES, ParallelResidualNet
from .training import as_image_tensor, recompute_batch_norm_statistics
from .wavelets import haar_torch


@dataclass
class PretextConfig:
    epochs: int = 20
    batch_size: int = 256  # cells per batch: 2 x 256 views, 510 negatives each
    lr: float = 1e-3
    temperature: float = 0.2
    projection_dim: int = 64
    zoom: float = 0.15  # scale in [1 - zoom, 1 + zoom]
    shift: float = 0.1  # of the image's half-width
    intensity: float = 0.4  # brightness x U(1 - i, 1 + i), contrast likewise
    noise: float = 0.02  # Gaussian, in units of the [0, 1] intensity
    seed: int = 0
    # bfloat16 autocast: 2.7x faster on a CPU with bf16 (512 views: 2.0 s instead of 5.5 s at 2
    # threads), 7x slower on an AVX2-only one (worker.ml.training.bf16_is_fast); the loss is
    # taken in float32
    bf16: bool = False


@dataclass
class PretextResult:
    model: ParallelResidualNet  # the trunk trained; its head is an untrained placeholder
    history: list[dict] = field(default_factory=list)  # epoch, loss, seconds
    seconds: float = 0.0


def random_views(images: torch.Tensor, config: PretextConfig, generator: torch.Generator) -> torch.Tensor:
    """One random view of each (N, 1, H, W) image: rotation by any angle, a mirror image, zoom and
    shift in one affine resampling, then brightness, contrast and noise."""
    n = len(images)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(0.0, 2 * math.pi)
    scale = uniform(1 - config.zoom, 1 + config.zoom)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, uniform(-config.shift, config.shift)], 1),
            torch.stack([sin * mirror, cos, uniform(-config.shift, config.shift)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1 - config.intensity, 1 + config.intensity).view(n, 1, 1, 1)
    brightness = uniform(1 - config.intensity, 1 + config.intensity).view(n, 1, 1, 1)
    views = ((views - mean) * contrast + mean) * brightness
    views = views + config.noise * torch.randn(views.shape, generator=generator)
    return views.clamp(0.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: for each of the 2N views, cross-entropy of finding its partner among the
    other 2N - 1 by cosine similarity / temperature."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(-math.inf)
    n = len(z1)
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partners)


def pretrain_contrastive(
    images: np.ndarray,
    config: PretextConfig,
    device: torch.device,
    n_classes: int = 2,
    progress: Optional[Callable[[int, int, float], None]] = None,
) -> PretextResult:
    """Train a fresh network's trunk on (N, 112, 112) unlabeled cells; `progress(epoch, epochs,
    loss)` after each epoch. Returns the network at its last epoch, in eval mode."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    cells = as_image_tensor(images)
    if len(cells) < 2:
        raise ValueError("contrastive pretraining needs at least 2 cells")
    model = ParallelResidualNet(n_classes).to(device)
    projection = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.ReLU(), nn.Linear(FEATURES, config.projection_dim)).to(
        device
    )
    parameters = [p for name, p in model.named_parameters() if not name.startswith("head.")] + list(projection.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=1e-6)
    batches_per_epoch = max(1, len(cells) // config.batch_size)  # the last, short batch is dropped
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * batches_per_epoch)
    history = []
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        projection.train()
        order = torch.randperm(len(cells), generator=generator)
        total = 0.0
        for b in range(batches_per_epoch):
            batch = cells[order[b * config.batch_size : (b + 1) * config.batch_size]]
            if len(batch) < 2:
                continue
            views = torch.cat([random_views(batch, config, generator), random_views(batch, config, generator)]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                z = projection(model.embed(haar_torch(views))).float()
            loss = nt_xent(z[: len(batch)], z[len(batch) :], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        history.append({"epoch": epoch, "loss": total / batches_per_epoch, "seconds": time.perf_counter() - epoch_started})
        if progress is not None:
            progress(epoch, config.epochs, history[-1]["loss"])
    # the running statistics saw augmented views with momentum: set them from the plain cells
    recompute_batch_norm_statistics(model, cells, device, config.batch_size)
    model.eval()
    return PretextResult(model=copy.deepcopy(model).cpu().eval(), history=history, seconds=time.perf_counter() - started)


def embed_cells(model: ParallelResidualNet, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """(N, 112, 112) cells -> (N, 128) trunk features (float32), in eval mode."""
    tensor = as_image_tensor(images)
    model.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(tensor), batch_size):
            out.append(model.embed(haar_torch(tensor[start : start + batch_size].to(device))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, FEATURES), np.float32)
