"""Level-1 Haar DWT into the network's two inputs.

Channel 0 is the approximation cA, channel 1 the sum of the details
cH + cV + cD (thesis 3.2.2). `haar_numpy` is the reference (pywavelets);
`haar_torch` is the same transform as a fixed stride-2 convolution, for
batches on the training device. A test keeps the two equal.
"""

import numpy as np
import pywt
import torch
import torch.nn.functional as F

# pywt.dwt2(x, "haar") on a 2x2 block [[a, b], [c, d]] gives
#   cA = (a + b + c + d) / 2,  cH = (a + b - c - d) / 2,
#   cV = (a - b + c - d) / 2,  cD = (a - b - c + d) / 2,
# so the detail sum is a single kernel too.
_HAAR_KERNELS = torch.tensor(
    [
        [[[0.5, 0.5], [0.5, 0.5]]],
        [[[1.5, -0.5], [-0.5, -0.5]]],
    ]
)


def haar_numpy(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, 2, H/2, W/2) float32 with pywavelets."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    approximation, (horizontal, vertical, diagonal) = pywt.dwt2(images, "haar", axes=(-2, -1))
    return np.stack([approximation, horizontal + vertical + diagonal], axis=1).astype(np.float32)


def haar_torch(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) or (N, H, W) -> (N, 2, H/2, W/2), on the images' device and dtype."""
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) or (N, H, W) images, got shape {tuple(images.shape)}")
    if images.shape[-1] % 2 or images.shape[-2] % 2:
        raise ValueError(f"image sides must be even, got {tuple(images.shape[-2:])}")
    kernels = _HAAR_KERNELS.to(device=images.device, dtype=images.dtype)
    return F.conv2d(images, kernels, stride=2)
