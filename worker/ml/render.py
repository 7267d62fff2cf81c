"""Relevance maps as pictures for the pathologist.

Palette: ColorBrewer's diverging RdBu (reversed): blue = negative relevance (evidence
against the explained class), white = none, red = positive (evidence for it). ColorBrewer
rates RdBu colour-blind safe; its two arms differ in lightness as well as hue, so they
stay apart in greyscale too. Each map is scaled symmetrically by its own 99.5th
percentile of |R| (a handful of extreme pixels would otherwise wash out the rest), so
colours compare regions within a map, not magnitudes across maps: the raw arrays (npy)
are there for that."""

import io

import numpy as np
from PIL import Image

# ColorBrewer RdBu, 11 classes, from strong blue (-1) through white (0) to strong red (+1)
_RDBU = np.array(
    [
        (5, 48, 97),
        (33, 102, 172),
        (67, 147, 195),
        (146, 197, 222),
        (209, 229, 240),
        (247, 247, 247),
        (253, 219, 199),
        (244, 165, 130),
        (214, 96, 77),
        (178, 24, 43),
        (103, 0, 31),
    ],
    dtype=np.float64,
)
PALETTE_NAME = "ColorBrewer RdBu (blue = negative, white = 0, red = positive), symmetric, 99.5th percentile of |R|"


def colorize(relevance: np.ndarray) -> np.ndarray:
    """(H, W) relevance -> (H, W, 3) uint8 RGB."""
    relevance = np.asarray(relevance, dtype=np.float64)
    scale = np.percentile(np.abs(relevance), 99.5) if relevance.size else 0.0
    normalised = np.clip(relevance / scale, -1, 1) if scale > 0 else np.zeros_like(relevance)
    position = (normalised + 1) / 2 * (len(_RDBU) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RDBU) - 2)
    weight = (position - low)[..., None]
    return np.round(_RDBU[low] * (1 - weight) + _RDBU[low + 1] * weight).astype(np.uint8)


def heatmap_png(relevance: np.ndarray) -> bytes:
    # zlib's default level: PIL's `optimize` took 54 ms a map against 7 ms, for files 1% smaller
    # (bench/README.md, "Round latency"), and a round renders two maps of every cell it queues
    buffer = io.BytesIO()
    Image.fromarray(colorize(relevance), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def array_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()
