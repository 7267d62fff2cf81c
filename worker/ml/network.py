"""The parallel residual network of thesis 3.2.2 (Fig. 20), laid out for zennit.

Input: one (N, 2, 56, 56) tensor, channel 0 the Haar approximation A and
channel 1 the detail sum D (see `wavelets`); `forward` slices it, so relevance
is taken w.r.t. a single input. Departures from the thesis table, all for
explainability (docs/method.md):

- each `conv, maxpool, BN, ReLU` is written `conv, BN, ReLU, maxpool` (the same
  function while BN scales are positive) and every conv, including the last
  conv of a residual block and each 1x1 skip projection, is followed directly
  by its own BN, in forward order and in module registration order, so that
  `SequentialMergeBatchNorm` merges every BN into its conv;
- residual sums go through `zennit.layer.Sum`, not `a + b`;
- a ReLU follows every residual sum (the thesis table shows one only after the
  first block); this is the ResNet convention and keeps the input of every conv
  after the first, and of the head, non-negative, which the z+ rule assumes;
- no module is called twice in one forward pass.

Module names: each branch is `branch_a` / `branch_d`, split into `early` (up to
and including the second max-pool: what transfer learning freezes) and `late`.
`fusion_block` is the last residual block; its output (after its ReLU, 128 x
14 x 14) is where `concept` relevance is read.
"""

import torch
from torch import nn

from .zennit_compat import zennit  # noqa: F401 - registers the torchvision stand-in first

# isort: split
from zennit.layer import Sum

INPUT_SIZE = 112  # cells are resized to INPUT_SIZE x INPUT_SIZE; the Haar transform halves it
ARCHITECTURE = "parallel-residual-net"
ARCHITECTURE_VERSION = 1
FEATURES = 128
# The first conv of each branch sees the wavelet coefficients (a box-rule layer).
INPUT_CONVS = ("branch_a.early.conv", "branch_d.early.conv")
EARLY_LAYERS = ("branch_a.early", "branch_d.early")
LAST_BLOCK = "fusion_block"


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class ResidualBlock(nn.Module):
    """conv3x3, BN, ReLU, conv3x3, BN (+ skip: identity or conv1x1, BN), Sum, ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, mid_channels)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(mid_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip_conv: nn.Conv2d | None
        self.skip_bn: nn.BatchNorm2d | None
        if in_channels != out_channels:
            self.skip_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
            self.skip_bn = nn.BatchNorm2d(out_channels)
        else:
            self.skip_conv = None
            self.skip_bn = None
        self.sum = Sum()
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.skip_conv is None or self.skip_bn is None else self.skip_bn(self.skip_conv(x))  # both or neither
        if self.sum._forward_hooks or self.sum._forward_pre_hooks:
            # zennit has attached its rule: the sum must be a module it can explain
            return self.relu_out(self.sum(torch.stack([residual, skip], dim=-1)))
        return self.relu_out(residual + skip)  # the same sum, without stacking a copy (18% of a training step)


class EarlyLayers(nn.Module):
    """conv3x3 1->32, BN, ReLU, maxpool; residual block 32->32; maxpool. 56x56 -> 14x14."""

    def __init__(self):
        super().__init__()
        self.conv = _conv3x3(1, 32)
        self.bn = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.block = ResidualBlock(32, 32, 32)
        self.pool2 = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool2(self.block(self.pool1(self.relu(self.bn(self.conv(x))))))


class Branch(nn.Module):
    """One wavelet input (1 x 56 x 56) -> 64 x 14 x 14."""

    def __init__(self):
        super().__init__()
        self.early = EarlyLayers()
        self.late = ResidualBlock(32, 64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))


class ParallelResidualNet(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.n_classes = n_classes
        self.early_layers_frozen = False
        self.branch_a = Branch()
        self.branch_d = Branch()
        self.fusion_conv = nn.Conv2d(128, 64, kernel_size=1)
        self.fusion_bn = nn.BatchNorm2d(64)
        self.fusion_relu = nn.ReLU()
        self.fusion_block = ResidualBlock(64, 128, FEATURES)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(FEATURES, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, 56, 56) wavelet coefficients -> (N, 128) pooled features: what the head sees."""
        features = torch.cat([self.branch_a(x[:, 0:1]), self.branch_d(x[:, 1:2])], dim=1)
        fused = self.fusion_relu(self.fusion_bn(self.fusion_conv(features)))
        return self.flatten(self.pool(self.fusion_block(fused)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, 56, 56) wavelet coefficients -> (N, n_classes) logits."""
        return self.head(self.embed(x))

    def early_modules(self) -> list[nn.Module]:
        return [self.get_submodule(name) for name in EARLY_LAYERS]

    def train(self, mode: bool = True):
        # Frozen early layers stay in eval mode whatever the caller asks, so
        # their BN layers keep normalising with (and never update) the running
        # statistics learned before the freeze.
        super().train(mode)
        if self.early_layers_frozen:
            for module in self.early_modules():
                module.eval()
        return self


def freeze_early_layers(model: ParallelResidualNet) -> ParallelResidualNet:
    """Freeze everything up to and including each branch's second max-pool (thesis 3.2.2).

    Their parameters stop receiving gradients, and `model.train()` keeps them in
    eval mode from now on (see ParallelResidualNet.train), so their BN running
    statistics stay fixed too.
    """
    for module in model.early_modules():
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    model.early_layers_frozen = True
    model.train(model.training)
    return model


def replace_head(model: ParallelResidualNet, n_classes: int) -> ParallelResidualNet:
    """A fresh linear head for `n_classes` (transfer to a project with other classes)."""
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    device = model.head.weight.device
    model.head = nn.Linear(FEATURES, n_classes).to(device)
    model.n_classes = n_classes
    return model
