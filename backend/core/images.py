"""The one place where an uploaded image becomes network input.

The API checks uploads with `decode_image`; workers, the simulator and the benchmarks call
`load_cell`, so a cell looks the same to the network wherever it comes from. INPUT_SIZE is the
network's (worker.ml.network.INPUT_SIZE; a test keeps them equal).
"""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

CHANNELS = ("luminance", "red", "green", "blue")
INPUT_SIZE = 112
DEFAULT_MAX_PIXELS = 4096 * 4096
# Pillow would open dozens more; fewer decoders, less attack surface.
FORMATS = ("PNG", "TIFF", "BMP", "JPEG")

# ITU-R 601-2 luma, the weights PIL uses for RGB -> "L"; computed here in float
# so that no precision is lost to PIL's rounding to 8 bits.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

_GRAY_8BIT_MODES = {"1", "L", "LA"}
# 16-bit grayscale. Scaled by 65535, the full range of the container: neither
# PNG (Pillow ignores sBIT) nor TIFF (BitsPerSample says 16 for 12-bit cameras)
# tells us the true bit depth reliably, and guessing it from the pixel values
# would make one cell's scale depend on its content. A 12-bit image thus lands
# in [0, 1/16]; the network sees every image of a project on the same scale.
_GRAY_16BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr"}


class InvalidImage(ValueError):
    """The bytes are not an image this service can use; the message says why."""


def decode_image(data: bytes, channel: str = "luminance", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode PNG/TIFF/BMP/JPEG bytes to a 2-D float32 array in [0, 1].

    Colour images are reduced to `channel` (one of CHANNELS); a grayscale image
    is its own luminance, red, green and blue. Multi-frame files give their
    first frame.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    if not data:
        raise InvalidImage("the file is empty")
    try:
        # open() reads only the header (and raises DecompressionBombError past
        # twice PIL's own limit), so the size check below runs before any pixel
        # data is decompressed.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width == 0 or height == 0:
            raise InvalidImage(f"the image is empty ({width}x{height} pixels)")
        if width * height > max_pixels:
            raise InvalidImage(
                f"the image is too large: {width}x{height} = {width * height} pixels, at most {max_pixels} are accepted"
            )
        image.load()
    except InvalidImage:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"the image is too large to decode safely: {error}") from error
    except UnidentifiedImageError as error:
        raise InvalidImage("the file is not an image in a supported format (PNG, TIFF, BMP, JPEG)") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidImage(f"the image is corrupt or truncated: {error}") from error
    return _to_channel(image, channel)


def _to_channel(image: Image.Image, channel: str) -> np.ndarray:
    mode = image.mode
    if mode in _GRAY_8BIT_MODES:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    elif mode in _GRAY_16BIT_MODES:
        gray = np.clip(np.asarray(image, dtype=np.float64), 0, 65535).astype(np.float32) / 65535.0
    elif mode in _COLOR_MODES:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        if channel == "luminance":
            return (rgb @ _LUMA_WEIGHTS).clip(0.0, 1.0).astype(np.float32)
        return np.ascontiguousarray(rgb[..., CHANNELS.index(channel) - 1], dtype=np.float32)
    else:
        raise InvalidImage(f"unsupported image mode {mode!r}: use 8- or 16-bit grayscale, RGB or RGBA")
    return gray


def resize_for_network(image: np.ndarray) -> np.ndarray:
    """Bicubic resize of a 2-D [0, 1] image to INPUT_SIZE x INPUT_SIZE float32.

    The aspect ratio is not kept (the thesis resizes every cell to 112x112).
    Bicubic overshoots near edges, hence the clip.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or 0 in image.shape:
        raise InvalidImage(f"expected a non-empty 2-D image, got shape {image.shape}")
    if image.shape == (INPUT_SIZE, INPUT_SIZE):
        resized = image
    else:
        resized = np.asarray(
            Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
    return np.clip(resized, 0.0, 1.0)


def load_cell(data: bytes, channel: str = "luminance") -> np.ndarray:
    """Image bytes -> (112, 112) float32 network input in [0, 1]."""
    return resize_for_network(decode_image(data, channel))
