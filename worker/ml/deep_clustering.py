"""Deep embedded clustering of cells (thesis 3.1.2-3.1.4, 4.1): a convolutional
autoencoder (Table 1) with a k-means clustering layer on its 512-d latent.

Three decoders, as in thesis 4.1.1:
- case 1: the plain decoder of Table 1;
- case 2: max-unpooling with the encoder's pooling indices plus copy-and-concatenate
  skips (Fig. 10-12);
- case 3: case 2 plus two reconstruction streams that branch off the encoder before
  its 3rd and 4th pooling, up-sample by transposed convolutions only, and are fused
  with the main reconstruction by concatenation + 1x1 conv (Fig. 14/15).

Loss (eq. 8-10): L = L_r + gamma * L_c, with L_r = ||x - x'||^2 (eq. 7) and the
k-means loss L_c = ||h - C y||^2, y the one-hot nearest centroid of the latent h,
C learnable (eq. 19). This is the hard k-means loss of Yang et al. (DCN), not DEC:
the thesis has no Student-t soft assignment, no target distribution and no KL term.
Both terms are per-cell sums of squares, averaged over the batch, so that gamma
weighs them as the thesis's sums do (a mean per pixel would shrink L_r 12544-fold).

Where Table 1 is vague or inconsistent, chosen here:
- Conv 5 (7x7 on a 7x7 volume) has padding 0: with the table's padding 1 it would
  give 3x3, not the 1x1x512 latent the text describes. The latent is linear (no ReLU)
  so that k-means sees signed features, as in Guo et al.'s DCEC.
- A ReLU follows every other conv and the transposed convs; the reconstruction
  (Conv 10, Conv-Fusion) is linear. No batch normalisation (the thesis names none,
  only He initialisation): the latent of a cell then never depends on its batch.
- Case 1 "unpools" by nearest-neighbour up-sampling: without stored indices there
  is no position to put a value back to, and the thesis gives no other rule.
- Case 2: each unpooled volume (C channels) is concatenated with the encoder's
  volume of the same size taken before its pooling (C channels), and a 1x1 conv
  (the "red triangle" of Fig. 12) mixes the 2C channels back to C; the convs of
  Table 1 then follow unchanged ("the only difference being the copy-and-
  concatenation layers"). A 1x1 mix costs a quarter of what a 3x3 one would at 112x112.
- Case 3 streams (Fig. 14 table): stream 2 starts from Conv 3 (128 @ 28x28), stream 3
  from Conv 4 (256 @ 14x14); each halves its channels per 2x2/stride-2 transposed
  conv up to 32 @ 112x112, then a 3x3 conv to one channel (Conv 10). The loss is
  taken on the fused output only.
Training uses Adam (as the classifier does) instead of the thesis's SGD (lr 0.01,
momentum 0.9), whose step would have to be retuned for the per-cell sum of squares.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from .network import INPUT_SIZE
from .training import ROTATION_STEP_DEGREES, rotate_batch

LATENT_DIM = 512
CASES = (1, 2, 3)
ENCODER_CHANNELS = (32, 64, 128, 256)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class DeepClusteringAutoencoder(nn.Module):
    """(N, 1, 112, 112) -> (reconstruction (N, 1, 112, 112), latent (N, 512)) for case 1, 2 or 3."""

    def __init__(self, case: int = 1):
        super().__init__()
        if case not in CASES:
            raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
        self.case = case
        c1, c2, c3, c4 = ENCODER_CHANNELS
        self.encoder_convs = nn.ModuleList([_conv3x3(1, c1), _conv3x3(c1, c2), _conv3x3(c2, c3), _conv3x3(c3, c4)])
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.to_latent = nn.Conv2d(c4, LATENT_DIM, kernel_size=7)  # Conv 5
        self.from_latent = nn.ConvTranspose2d(LATENT_DIM, c4, kernel_size=7)  # Conv 6
        # Conv 7..10, deepest first: each follows the unpooling of its level.
        self.decoder_convs = nn.ModuleList([_conv3x3(c4, c3), _conv3x3(c3, c2), _conv3x3(c2, c1), _conv3x3(c1, 1)])
        if case == 1:
            self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        else:
            self.unpool = nn.MaxUnpool2d(2, stride=2)
            self.skip_mixers = nn.ModuleList([nn.Conv2d(2 * c, c, kernel_size=1) for c in (c4, c3, c2, c1)])
        if case == 3:
            self.stream_from_conv3 = self._transposed_stream(c3, levels=2)
            self.stream_from_conv4 = self._transposed_stream(c4, levels=3)
            self.fusion = nn.Conv2d(3, 1, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:  # every conv here has one
                    nn.init.zeros_(module.bias)

    @staticmethod
    def _transposed_stream(channels: int, levels: int) -> nn.Sequential:
        layers = []
        for _ in range(levels):
            layers += [nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2), nn.ReLU()]
            channels //= 2
        return nn.Sequential(*layers, _conv3x3(channels, 1))

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list, list]:
        """Latent (N, 512), the volumes before each pooling, and the pooling indices."""
        before_pool, indices = [], []
        for conv in self.encoder_convs:
            x = F.relu(conv(x))
            before_pool.append(x)
            x, index = self.pool(x)
            indices.append(index)
        return self.to_latent(x).flatten(1), before_pool, indices

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent, before_pool, indices = self._encode(x)
        y = F.relu(self.from_latent(latent[:, :, None, None]))
        for level, conv in enumerate(self.decoder_convs):
            skip, index = before_pool[-1 - level], indices[-1 - level]
            if self.case == 1:
                y = self.upsample(y)
            else:
                y = self.unpool(y, index, output_size=skip.shape[-2:])
                y = F.relu(self.skip_mixers[level](torch.cat([y, skip], dim=1)))
            y = conv(y)
            if level < len(self.decoder_convs) - 1:
                y = F.relu(y)
        if self.case == 3:
            streams = [y, self.stream_from_conv3(before_pool[2]), self.stream_from_conv4(before_pool[3])]
            y = self.fusion(torch.cat(streams, dim=1))
        return y, latent


class ClusteringLayer(nn.Module):
    """Learnable centroids C (k, 512) and the k-means loss of eq. 9-10."""

    def __init__(self, n_clusters: int, dim: int = LATENT_DIM):
        super().__init__()
        self.centroids = nn.Parameter(torch.zeros(n_clusters, dim))

    def squared_distances(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, k) ||h_i - c_j||^2."""
        return (latent[:, None, :] - self.centroids[None, :, :]).pow(2).sum(-1)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(assignments y_i = nearest centroid, L_c averaged over the batch)."""
        distances = self.squared_distances(latent)
        nearest, assignments = distances.min(dim=1)
        return assignments, nearest.mean()


@dataclass
class DeepClusteringConfig:
    pretrain_epochs: int = 20
    cluster_epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    gamma: float = 0.1
    augment: bool = True  # a random multiple of 18 degrees per cell per epoch, both phases
    seed: int = 0
    kmeans_n_init: int = 10


@dataclass
class DeepClusteringResult:
    assignments: np.ndarray  # (N,) nearest learned centroid of each cell, after global training
    latent: np.ndarray  # (N, 512)
    centroids: np.ndarray  # (k, 512)
    initial_assignments: np.ndarray  # (N,) k-means on the pretrained latent (gamma = 0)
    history: list[dict] = field(default_factory=list)  # phase, epoch (within phase), recon_mse, cluster_loss, loss, seconds
    recon_mse: float = 0.0  # per pixel, unrotated cells, after global training
    pretrained_recon_mse: float = 0.0  # the same, after pretraining
    seconds: float = 0.0


def standardise_cells(images: np.ndarray) -> np.ndarray:
    """Each cell to zero mean and unit variance over its own pixels: without it a cell's
    brightness (the slide's exposure, not its pattern) dominates the latent."""
    images = np.asarray(images, dtype=np.float32)
    mean = images.mean(axis=(1, 2), keepdims=True)
    std = images.std(axis=(1, 2), keepdims=True)
    return (images - mean) / np.maximum(std, 1e-6)


def reconstruction_loss(images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Eq. 7 per cell, averaged over the batch."""
    return (images - reconstruction).pow(2).flatten(1).sum(1).mean()


def deep_clustering_loss(
    images: torch.Tensor,
    reconstruction: torch.Tensor,
    latent: torch.Tensor,
    clustering: Optional[ClusteringLayer],
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, L_r, L_c) of eq. 8; without a clustering layer (pretraining) L_c = 0."""
    recon = reconstruction_loss(images, reconstruction)
    cluster = clustering(latent)[1] if clustering is not None else torch.zeros((), device=recon.device)
    return recon + gamma * cluster, recon, cluster


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}) images, got shape {images.shape}")
    return torch.from_numpy(images).unsqueeze(1)


def _to_device(model: nn.Module, device) -> nn.Module:
    # Channels-last weights and batches: a training step took 25% less time on this
    # machine's CPU (oneDNN); the results are the same function.
    # Module.to takes memory_format; torch's stubs do not list it (hence the ignore).
    return model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]


def _batch(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device).contiguous(memory_format=torch.channels_last)


def _encode_and_score(model, images: torch.Tensor, device, batch_size: int) -> tuple[np.ndarray, float]:
    """Latent of every cell and the per-pixel reconstruction MSE, unrotated."""
    _to_device(model, device).eval()
    latents, squared_error = [], 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = _batch(images[start : start + batch_size], device)
            reconstruction, latent = model(batch)
            latents.append(latent.cpu().numpy())
            squared_error += (batch - reconstruction).pow(2).sum().item()
    if not latents:
        return np.zeros((0, LATENT_DIM), dtype=np.float32), float("nan")
    return np.concatenate(latents), squared_error / images.numel()


def encode(model: DeepClusteringAutoencoder, images: np.ndarray, device, batch_size: int = 128) -> np.ndarray:
    """(N, 112, 112) cells -> (N, 512) latent features, in eval mode."""
    return _encode_and_score(model, _as_tensor(images), device, batch_size)[0]


def _train_epochs(
    phase: str,
    model,
    clustering: Optional[ClusteringLayer],
    images: torch.Tensor,
    epochs: int,
    config: DeepClusteringConfig,
    device,
    seed: int,
    optimizer: torch.optim.Optimizer,
    progress: Optional[Callable[[int, int], None]],
) -> list[dict]:
    """L_r (+ gamma L_c when `clustering` is given); one history row per epoch."""
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(images), generator=generator)
        steps = torch.randint(0, 360 // ROTATION_STEP_DEGREES, (len(images),), generator=generator)
        totals = {"recon": 0.0, "cluster": 0.0, "loss": 0.0}
        for start in range(0, len(order), config.batch_size):
            batch_idx = order[start : start + config.batch_size]
            batch = images[batch_idx].to(device)
            if config.augment:
                batch = rotate_batch(batch, steps[batch_idx].to(device))
            batch = batch.contiguous(memory_format=torch.channels_last)
            reconstruction, latent = model(batch)
            loss, recon, cluster = deep_clustering_loss(batch, reconstruction, latent, clustering, config.gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in (("recon", recon), ("cluster", cluster), ("loss", loss)):
                totals[name] += value.item() * len(batch_idx)
        n = len(order)
        history.append(
            {
                "phase": phase,
                "epoch": epoch,
                "recon_mse": totals["recon"] / n / (INPUT_SIZE * INPUT_SIZE),
                "cluster_loss": totals["cluster"] / n,
                "loss": totals["loss"] / n,
                "seconds": time.perf_counter() - started,
            }
        )
        if progress is not None:
            progress(epoch, epochs)
    return history


def pretrain_autoencoder(
    model: DeepClusteringAutoencoder,
    images: np.ndarray,
    config: DeepClusteringConfig,
    device,
    progress: Optional[Callable[[int, int], None]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
) -> list[dict]:
    """Reconstruction-only training (gamma = 0) for config.pretrain_epochs; returns the history.
    Pass `optimizer` to go on with it afterwards (train_deep_clustering does)."""
    _to_device(model, device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=config.lr)
    tensor = _as_tensor(images)
    return _train_epochs(
        "pretrain", model, None, tensor, config.pretrain_epochs, config, device, config.seed, optimizer, progress
    )


def init_centroids_kmeans(clustering: ClusteringLayer, latent: np.ndarray, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Set the centroids to the k-means centres of `latent`; returns the k-means labels."""
    kmeans = KMeans(n_clusters=clustering.centroids.shape[0], n_init=n_init, random_state=seed).fit(latent)
    with torch.no_grad():
        clustering.centroids.copy_(torch.as_tensor(kmeans.cluster_centers_, dtype=clustering.centroids.dtype))
    return kmeans.labels_.astype(np.int64)


def train_deep_clustering(
    model: DeepClusteringAutoencoder,
    images: np.ndarray,
    n_clusters: int,
    config: DeepClusteringConfig,
    device,
    progress: Optional[Callable[[int, int], None]] = None,
) -> DeepClusteringResult:
    """Pretrain (gamma = 0), initialise the centroids by k-means on the latent, then
    train autoencoder and centroids together on L_r + gamma L_c. No labels are used.
    `progress(epochs_done, epochs_total)` is called after every epoch of both phases."""
    started = time.perf_counter()
    tensor = _as_tensor(images)
    if len(tensor) < n_clusters:
        raise ValueError(f"need at least as many cells as clusters: {len(tensor)} cells, {n_clusters} clusters")
    total = config.pretrain_epochs + config.cluster_epochs
    _to_device(model, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history = pretrain_autoencoder(
        model, images, config, device, progress and (lambda epoch, _: progress(epoch, total)), optimizer
    )

    clustering = ClusteringLayer(n_clusters).to(device)
    pretrained_latent, pretrained_recon_mse = _encode_and_score(model, tensor, device, config.batch_size)
    initial_assignments = init_centroids_kmeans(clustering, pretrained_latent, config.seed, config.kmeans_n_init)
    # One Adam for both phases: a fresh one starts with steps of about lr on every
    # weight at once, which here threw the reconstruction back 8-fold and then
    # collapsed all cells into one cluster.
    optimizer.add_param_group({"params": list(clustering.parameters())})
    # Its own stream of shuffles and rotations, so that the pretraining draws stay the same whatever follows.
    history += _train_epochs(
        "cluster",
        model,
        clustering,
        tensor,
        config.cluster_epochs,
        config,
        device,
        config.seed + 1,
        optimizer,
        progress and (lambda epoch, _: progress(config.pretrain_epochs + epoch, total)),
    )

    latent, recon_mse = _encode_and_score(model, tensor, device, config.batch_size)
    with torch.no_grad():
        assignments = clustering.squared_distances(torch.from_numpy(latent).to(device)).argmin(1).cpu().numpy()
    return DeepClusteringResult(
        assignments=assignments,
        latent=latent,
        centroids=clustering.centroids.detach().cpu().numpy(),
        initial_assignments=initial_assignments,
        history=history,
        recon_mse=recon_mse,
        pretrained_recon_mse=pretrained_recon_mse,
        seconds=time.perf_counter() - started,
    )
