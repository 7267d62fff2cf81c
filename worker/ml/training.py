"""Training, prediction, devices and checkpoints for ParallelResidualNet.

Images come in as (N, 112, 112) float32 arrays made by `backend.core.images.load_cell`; the
Haar transform runs here, per batch, on the training device.
"""

import copy
import io
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .network import ARCHITECTURE, ARCHITECTURE_VERSION, FEATURES, INPUT_SIZE, ParallelResidualNet, freeze_early_layers
from .wavelets import haar_torch

ROTATION_STEP_DEGREES = 18
LR_DECAYS = ("cosine", "none")
CLASS_WEIGHTINGS = ("balanced", "none")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainingConfig:
    max_epochs: int = 20
    # epochs without a better validation loss after which training stops; None: every epoch of
    # the cosine schedule runs and the best is kept. A warm-started round's first epochs at the
    # peak lr often score worse than the model it started from, and a patience stopped it there,
    # before the lr had decayed (docs/method.md: the curves without early stopping).
    patience: Optional[int] = None
    batch_size: int = 128
    lr: float = 1e-3
    # "cosine": lr follows a cosine from `lr` down to 0 over max_epochs, stepped
    # once per epoch. At a constant lr the validation accuracy swung by up to 10
    # points between epochs (measured on I3A); a decay fixed in advance settles it
    # without a second knob, and does not key on the validation loss, which on
    # the small labeled sets of early active-learning rounds is noisy (a
    # ReduceLROnPlateau would have to react to that same noise, with a patience
    # that must stay below the early-stopping one). "none" keeps lr constant.
    lr_decay: str = "cosine"
    val_fraction: float = 0.2
    augment: bool = True  # a random multiple of 18 degrees per sample per epoch
    seed: int = 0
    freeze_early: bool = False
    # "balanced": cross-entropy weighted by n / (classes x n_class) of the training labels, so
    # that a strategy's class-skewed picks (or a rare class such as Golgi) do not tilt the model
    # towards the classes it was shown most; "none": plain cross-entropy
    class_weighting: str = "balanced"
    # "bf16": bfloat16 autocast for the forward passes (CPU and GPU); "fp32": none
    precision: str = "fp32"


@dataclass
class TrainingResult:
    model: ParallelResidualNet  # the best checkpoint by validation loss
    epochs_run: int
    best_epoch: int  # 1-based
    best_val_loss: float
    history: list[dict] = field(default_factory=list)  # epoch, train_loss, val_loss, val_acc, lr
    seconds: float = 0.0


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds `device` up: on a GPU that computes in bf16, or a CPU with
    AVX512-BF16 or AMX. On an AVX2-only CPU (AMD EPYC) it is emulated: a forward and backward
    pass of 64 cells took 30 s in bf16 against 4.3 s in float32 (one thread), where a CPU with
    bf16 had run it 2.7x faster than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # private, but torch's own test of what its CPU kernels can use
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_device(name: str) -> torch.device:
    """ "auto" (CUDA if available, else CPU), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available to torch here; use 'cpu' or 'auto'")
        return torch.device("cuda")
    raise ValueError(f"unknown device {name!r}; expected 'auto', 'cpu' or 'cuda'")


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, validation), each class in proportion.

    Every class keeps at least one training sample, so a class seen once is
    never held out. Returns an empty validation set when nothing can be held
    out (fewer than 5 samples, fraction 0, or only singleton classes).
    """
    labels = np.asarray(labels)
    n = len(labels)
    everything = np.arange(n)
    if n < 5 or fraction <= 0:
        return everything, everything[:0]
    classes, counts = np.unique(labels, return_counts=True)
    quota = fraction * counts
    room = counts - 1
    take = np.minimum(np.floor(quota).astype(int), room)
    wanted = max(1, round(fraction * n))
    # Largest remainder first, then round-robin over classes that still have room.
    by_remainder = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while take.sum() < wanted and (take < room).any():
        for k in by_remainder:
            if take.sum() < wanted and take[k] < room[k]:
                take[k] += 1
    validation = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in zip(classes, take)]))
    return np.setdiff1d(everything, validation), validation


def rotate_batch(images: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Rotate each (N, 1, H, W) image by steps[i] * 18 degrees; corners fill with 0."""
    angles = steps.to(images.dtype) * (math.pi * ROTATION_STEP_DEGREES / 180.0)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def as_image_tensor(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}) images, got shape {images.shape}")
    return torch.from_numpy(images).unsqueeze(1)


def recompute_batch_norm_statistics(model, images: torch.Tensor, device, batch_size: int, precision: str = "fp32") -> None:
    """Set the running statistics of every trainable BN to their average over `images`.

    With the few batches per epoch of small labeled sets, the running averages
    (momentum 0.1) lag far behind the weights: measured on a two-class toy set,
    a model at 100% accuracy in train mode scored 50% in eval mode after 8
    epochs. Recomputing them before each validation makes the validation loss,
    and so early stopping and the checkpoint choice, judge the weights as they
    are. BN layers in eval mode (frozen early layers) keep their statistics.

    The batches are drawn in a fixed random order: the variance kept is the mean of the batches'
    variances, so batches of one class each (cells in import order, class folder by class
    folder) would keep only the within-class variance. On I3A that made every eval-mode
    prediction worse the more cells a model was trained on (all 8,370 pool cells: 68.6% test ACA).
    """
    model.train()
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training]
    momenta = [m.momentum for m in batch_norms]
    for module in batch_norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the batches below
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), autocast(device, precision):
        for start in range(0, len(images), batch_size):
            model(haar_torch(images[order[start : start + batch_size]].to(device)))
    for module, momentum in zip(batch_norms, momenta):
        module.momentum = momentum


def autocast(device, precision: str):
    """The context the forward passes run in: bfloat16 autocast for "bf16", nothing for "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (classes present x n_class) for each class present, 0 for a class absent."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _evaluate(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    device,
    batch_size: int,
    weight: Optional[torch.Tensor],
    precision: str,
) -> tuple[float, float]:
    """(loss, accuracy) in eval mode; with `weight`, each class's cells weigh alike in the loss."""
    model.eval()
    total_loss, total_weight, correct = 0.0, 0.0, 0
    with torch.no_grad(), autocast(device, precision):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            target = labels[start : start + batch_size].to(device)
            logits = model(haar_torch(batch)).float()
            losses = F.cross_entropy(logits, target, reduction="none")
            weights = torch.ones_like(losses) if weight is None else weight.to(device)[target]
            total_loss += (losses * weights).sum().item()
            total_weight += weights.sum().item()
            correct += (logits.argmax(1) == target).sum().item()
    return total_loss / max(total_weight, 1e-12), correct / len(images)


def train_classifier(
    model: ParallelResidualNet,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainingConfig,
    device: torch.device,
    progress: Optional[Callable[[int, int], None]] = None,
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> TrainingResult:
    """Train `model` in place with Adam and cross-entropy, and return it at the
    epoch with the lowest validation loss (in eval mode).

    `validation` (images, labels): a fixed set to stop on and choose the checkpoint by, the
    same whatever was labeled; without it, a stratified `val_fraction` of the labels."""
    started = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    all_images = as_image_tensor(images)
    if len(all_images) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many labels as images, and at least one: {len(all_images)} images, {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= model.n_classes:
        raise ValueError(f"labels must lie in [0, {model.n_classes}), got [{labels.min()}, {labels.max()}]")
    if config.lr_decay not in LR_DECAYS:
        raise ValueError(f"unknown lr_decay {config.lr_decay!r}; expected one of {', '.join(LR_DECAYS)}")
    if config.class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(
            f"unknown class_weighting {config.class_weighting!r}; expected one of {', '.join(CLASS_WEIGHTINGS)}"
        )

    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if validation is not None:
        train_idx = np.arange(len(labels))
        val_images, val_labels = as_image_tensor(validation[0]), torch.from_numpy(np.asarray(validation[1], dtype=np.int64))
    else:
        train_idx, val_idx = stratified_holdout(labels, config.val_fraction, rng)
        if len(val_idx) == 0:
            # Too few labels to hold any out: validate on the training set itself.
            # Early stopping and checkpoint choice then follow the training fit.
            val_idx = train_idx
        val_images, val_labels = all_images[val_idx], torch.from_numpy(labels[val_idx])
    train_images, train_labels = all_images[train_idx], torch.from_numpy(labels[train_idx])
    weight = val_weight = None
    if config.class_weighting == "balanced":
        weight = class_weights(labels[train_idx], model.n_classes)
        val_weight = class_weights(val_labels.numpy(), model.n_classes)

    model.to(device)
    if config.freeze_early:
        freeze_early_layers(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs, eta_min=0.0)
        if config.lr_decay == "cosine"
        else None
    )

    history: list[dict] = []
    best_state, best_epoch, best_val_loss = None, 0, math.inf
    for epoch in range(1, config.max_epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        steps = torch.randint(0, 360 // ROTATION_STEP_DEGREES, (len(train_images),), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), config.batch_size):
            batch_idx = order[start : start + config.batch_size]
            batch = train_images[batch_idx].to(device)
            if config.augment:
                batch = rotate_batch(batch, steps[batch_idx].to(device))
            target = train_labels[batch_idx].to(device)
            with autocast(device, config.precision):
                logits = model(haar_torch(batch)).float()
            loss = F.cross_entropy(logits, target, weight=None if weight is None else weight.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch_idx)
        if scheduler is not None:
            scheduler.step()
        recompute_batch_norm_statistics(model, train_images, device, config.batch_size, config.precision)

        val_loss, val_acc = _evaluate(model, val_images, val_labels, device, config.batch_size, val_weight, config.precision)
        history.append(
            {"epoch": epoch, "train_loss": total_loss / len(order), "val_loss": val_loss, "val_acc": val_acc, "lr": lr}
        )
        if val_loss < best_val_loss:
            best_val_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        if progress is not None:
            progress(epoch, config.max_epochs)
        if config.patience is not None and epoch - best_epoch >= config.patience:
            break

    if best_state is None:
        raise RuntimeError(f"training diverged: the validation loss was {history[-1]['val_loss']} in every epoch")
    model.load_state_dict(best_state)
    model.eval()
    return TrainingResult(
        model=model,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_val_loss=best_val_loss,
        history=history,
        seconds=time.perf_counter() - started,
    )


def predict_proba(
    model: ParallelResidualNet, images: np.ndarray, device: torch.device, batch_size: int = 128, precision: str = "fp32"
) -> np.ndarray:
    """(N, 112, 112) images -> (N, n_classes) softmax probabilities (float64), in eval mode."""
    return model_outputs(model, images, device, batch_size, precision)[0]


def model_outputs(
    model: ParallelResidualNet, images: np.ndarray, device: torch.device, batch_size: int = 128, precision: str = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities (N, n_classes) float64, trunk features (N, 128) float32) in one pass."""
    tensor = as_image_tensor(images)
    model.to(device)
    model.eval()
    probabilities, features = [], []
    with torch.no_grad(), autocast(device, precision):
        for start in range(0, len(tensor), batch_size):
            embedded = model.embed(haar_torch(tensor[start : start + batch_size].to(device)))
            probabilities.append(torch.softmax(model.head(embedded).double(), dim=1).cpu().numpy())
            features.append(embedded.float().cpu().numpy())
    if not probabilities:
        return np.zeros((0, model.n_classes)), np.zeros((0, FEATURES), np.float32)
    return np.concatenate(probabilities), np.concatenate(features)


def save_checkpoint(model: ParallelResidualNet) -> bytes:
    """The model's weights plus what is needed to rebuild it, as bytes."""
    payload = {
        "architecture": ARCHITECTURE,
        "architecture_version": ARCHITECTURE_VERSION,
        "n_classes": model.n_classes,
        # Kept so that later rounds fine-tune a transferred model as the first did.
        "early_layers_frozen": bool(model.early_layers_frozen),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes, map_location="cpu") -> ParallelResidualNet:
    """Rebuild a model saved by `save_checkpoint` (early layers frozen if they were), in eval mode."""
    payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    found = (payload.get("architecture"), payload.get("architecture_version"))
    if found != (ARCHITECTURE, ARCHITECTURE_VERSION):
        raise ValueError(
            f"checkpoint holds architecture {found[0]!r} version {found[1]!r}; "
            f"this code reads {ARCHITECTURE!r} version {ARCHITECTURE_VERSION}"
        )
    model = ParallelResidualNet(payload["n_classes"])
    model.load_state_dict(payload["state_dict"])
    if payload.get("early_layers_frozen", False):
        freeze_early_layers(model)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
