"""Relevance maps of ParallelResidualNet with zennit (thesis 2.3.2; docs/method.md, "Relevance").

`relevance_maps` explains one class per cell (the predicted one unless told)
with one of METHODS and returns, from a single modified backward pass:

- the relevance of the two wavelet inputs A and D (`input_maps`),
- the same projected onto the 112x112 image for display (`image_maps`),
- the relevance arriving at the output of the last residual block, summed over
  positions (`concept`, one value per channel).

Under an LRP composite the (modified) gradient that reaches a tensor *is* its
relevance: each rule's backward returns input x normalised upper relevance.
So `concept` is read as the gradient at the `fusion_block` output, not as
gradient x activation. With the explained output set to one-hot(target) x
logits, DeepTaylor maps and concepts sum to the explained logit.

Measured on real I3A cells (tests/ml/test_relevance.py), float32:
- deeptaylor: input maps and concepts sum to the logit within 1e-5 (relative).
- lrp-epsilon does not conserve here. The epsilon absorbs relevance at every
  layer: at the thesis's epsilon = 100 concepts keep ~1% of the logit and
  input maps ~1e-12 of it (the map tends to gradient x input up to scale,
  which L2-normalised representations ignore). At epsilon = 1e-3 concepts sum
  to the logit within 1%, but input maps blow up (sums up to 1e4 x the logit:
  the signed Haar detail input and opposite-signed residual summands give
  near-zero denominators, which only the box / z+ rules avoid).
- gradient: plain gradient of the explained logit. Its `concept` is the same
  vector for every cell of a class (the head's weight row: global average
  pooling spreads it evenly), so it carries no per-cell information.
"""

import contextlib
import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .network import FEATURES, INPUT_CONVS, INPUT_SIZE, LAST_BLOCK
from .training import as_image_tensor
from .wavelets import haar_torch
from .zennit_compat import zennit  # noqa: F401 - registers the torchvision stand-in first

# isort: split
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite, NameLayerMapComposite, layer_map_base
from zennit.core import Composite
from zennit.rules import Epsilon, ZBox, ZPlus
from zennit.types import Convolution, Linear

METHODS = ("deeptaylor", "lrp-epsilon", "gradient")
DEFAULT_EPSILON = 100.0  # thesis Table 3: LRP with epsilon = 100


def _haar_input_bounds() -> tuple[tuple[float, float], ...]:
    """(low, high) of each wavelet input channel (A, D) over all images in [0, 1].

    Each Haar output is linear in its 2x2 pixel block, so its extremes lie at
    the block's binary corners: A in [0, 2], D in [-1.5, 1.5]."""
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=4))).reshape(16, 1, 2, 2)
    coefficients = haar_torch(corners).flatten(1)  # (16, 2): A, D
    return tuple((float(low), float(high)) for low, high in zip(coefficients.min(0).values, coefficients.max(0).values))


INPUT_BOUNDS = _haar_input_bounds()  # INPUT_CONVS[i] sees channel i


def deeptaylor_composite() -> Composite:
    """z^B (box) rule on each input conv, z+ on every other conv and the head, BN merged into its conv."""
    name_map = [((name,), ZBox(low, high)) for name, (low, high) in zip(INPUT_CONVS, INPUT_BOUNDS)]
    layer_map = layer_map_base() + [((Convolution, Linear), ZPlus(zero_params=["bias"]))]
    return NameLayerMapComposite(name_map=name_map, layer_map=layer_map, canonizers=[SequentialMergeBatchNorm()])


def lrp_epsilon_composite(epsilon: float = DEFAULT_EPSILON) -> Composite:
    """Epsilon rule on every conv and the head (biases zeroed for conservation), BN merged into its conv."""
    layer_map = layer_map_base() + [((Convolution, Linear), Epsilon(epsilon=epsilon, zero_params=["bias"]))]
    return LayerMapComposite(layer_map=layer_map, canonizers=[SequentialMergeBatchNorm()])


def composite_for(method: str, epsilon: float = DEFAULT_EPSILON) -> Optional[Composite]:
    """The zennit composite of `method`; None for the plain gradient."""
    if method == "deeptaylor":
        return deeptaylor_composite()
    if method == "lrp-epsilon":
        return lrp_epsilon_composite(epsilon)
    if method == "gradient":
        return None
    raise ValueError(f"unknown relevance method {method!r}; expected one of {', '.join(METHODS)}")


@dataclass
class RelevanceMaps:
    """Relevance of N cells for one explained class each; arrays are float32 unless noted."""

    input_maps: Optional[np.ndarray]  # (N, 2, 56, 56): w.r.t. the wavelet inputs A, D; None if not asked for
    concept: np.ndarray  # (N, 128): relevance at the fusion_block output, summed over positions
    logits: np.ndarray  # (N, C)
    predicted: np.ndarray  # (N,) int64
    target: np.ndarray  # (N,) int64, the explained class

    @property
    def image_maps(self) -> Optional[np.ndarray]:
        """(N, 112, 112) for display, see `project_to_image`; made on access (strategies need only input_maps)."""
        return None if self.input_maps is None else project_to_image(self.input_maps)


def project_to_image(input_maps: np.ndarray) -> np.ndarray:
    """(N, 2, 56, 56) -> (N, 112, 112): each coefficient pair's relevance A + D spread evenly over its 2x2 pixel block.

    A Haar coefficient depends on exactly its 2x2 block, so this places relevance
    where it came from at the resolution the network sees, and conserves the sum.
    (An LRP rule through the signed detail kernel would divide by sums near zero.)"""
    per_block = input_maps.sum(axis=1) / 4.0
    return per_block.repeat(2, axis=1).repeat(2, axis=2).astype(np.float32)


def relevance_maps(
    model,
    images: np.ndarray,
    method: str,
    device: torch.device,
    batch_size: int = 32,
    target: Optional[np.ndarray] = None,
    epsilon: float = DEFAULT_EPSILON,
    want_input_maps: bool = True,
) -> RelevanceMaps:
    """Explain `target` (default: the predicted class) for (N, 112, 112) images in [0, 1].

    The output fed back is one-hot(target) x logits for the LRP methods (so a
    conserving map sums to the logit) and one-hot(target) for "gradient" (the
    gradient of the explained logit). With `want_input_maps=False` only
    `concept` is computed: autograd then runs the backward pass only from the
    output down to the fusion_block output, skipping the convolutional branches.

    The model is put in eval mode and restored to its mode afterwards; zennit's
    hooks are removed and its BN merge undone on exit (the state_dict is
    bit-identical). Like `predict_proba`, the model is left on `device`.
    """
    composite = composite_for(method, epsilon)
    tensor = as_image_tensor(images)
    if target is not None:
        target = np.asarray(target, dtype=np.int64)
        if target.shape != (len(tensor),) or (len(target) and (target.min() < 0 or target.max() >= model.n_classes)):
            raise ValueError(f"target must hold one class in [0, {model.n_classes}) per image; got shape {target.shape}")
    was_training = model.training
    model.to(device)
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    capture = model.get_submodule(LAST_BLOCK).register_forward_hook(
        lambda module, inputs, output: captured.update(out=output)
    )
    input_maps, concept, logits, explained = [], [], [], []
    try:
        with composite.context(model) if composite is not None else contextlib.nullcontext():
            for start in range(0, len(tensor), batch_size):
                # x requires grad even for concepts alone, so that a model with frozen layers still builds a graph.
                x = haar_torch(tensor[start : start + batch_size].to(device)).requires_grad_(True)
                output = model(x)
                if target is None:
                    classes = output.argmax(1)
                else:
                    classes = torch.from_numpy(target[start : start + batch_size]).to(device)
                fed_back = torch.nn.functional.one_hot(classes, output.shape[1]).to(output.dtype)
                if composite is not None:
                    fed_back = fed_back * output.detach()
                wanted = (captured.pop("out"), x) if want_input_maps else (captured.pop("out"),)
                gradients = torch.autograd.grad((output,), wanted, grad_outputs=(fed_back,))
                concept.append(gradients[0].sum(dim=(2, 3)).cpu().numpy())
                if want_input_maps:
                    input_maps.append(gradients[1].cpu().numpy())
                logits.append(output.detach().cpu().numpy())
                explained.append(classes.cpu().numpy())
    finally:
        capture.remove()
        model.train(was_training)

    def stacked(chunks: list[np.ndarray], empty_shape: tuple, dtype) -> np.ndarray:
        return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(empty_shape, dtype)

    all_logits = stacked(logits, (0, model.n_classes), np.float32)
    return RelevanceMaps(
        input_maps=stacked(input_maps, (0, 2, INPUT_SIZE // 2, INPUT_SIZE // 2), np.float32) if want_input_maps else None,
        concept=stacked(concept, (0, FEATURES), np.float32),
        logits=all_logits,
        predicted=all_logits.argmax(1).astype(np.int64),
        target=stacked(explained, (0,), np.int64),
    )
