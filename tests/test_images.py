import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.core.images import INPUT_SIZE, InvalidImage, decode_image, load_cell, resize_for_network


def encode(array_or_image, fmt: str, **options) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(height=40, width=50, dtype=np.uint8, top=255) -> np.ndarray:
    values = np.linspace(0, top, height * width).reshape(height, width)
    return np.round(values).astype(dtype)


def rgb_image(height=30, width=20) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_8bit_grayscale_decodes_exactly_to_unit_range(fmt):
    pixels = gradient()
    decoded = decode_image(encode(pixels, fmt))
    assert decoded.dtype == np.float32 and decoded.shape == pixels.shape
    np.testing.assert_allclose(decoded, pixels / 255.0, atol=1e-7)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_by_65535(fmt):
    pixels = gradient(dtype=np.uint16, top=65535)
    data = encode(pixels, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    decoded = decode_image(data)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, pixels / 65535.0, atol=1e-6)
    assert decoded.max() == pytest.approx(1.0)


def test_12bit_values_in_a_16bit_file_stay_on_the_16bit_scale():
    pixels = gradient(dtype=np.uint16, top=4095)
    decoded = decode_image(encode(pixels, "PNG"))
    assert decoded.max() == pytest.approx(4095 / 65535)


def test_rgb_is_reduced_to_the_named_channel():
    pixels = rgb_image()
    data = encode(pixels, "PNG")
    for index, channel in enumerate(["red", "green", "blue"]):
        np.testing.assert_allclose(decode_image(data, channel), pixels[..., index] / 255.0, atol=1e-7)


def test_rgb_luminance_matches_pil_L_conversion():
    pixels = rgb_image()
    luminance = decode_image(encode(pixels, "PNG"), "luminance")
    pil_l = np.asarray(Image.fromarray(pixels).convert("L")) / 255.0
    # PIL rounds to 8 bits; we keep the float.
    np.testing.assert_allclose(luminance, pil_l, atol=0.51 / 255)


def test_rgba_ignores_alpha_and_palette_images_decode_like_their_rgb():
    pixels = rgb_image()
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode(rgba, "PNG"), "green"), decode_image(encode(pixels, "PNG"), "green"))
    palette = Image.fromarray(pixels).quantize(16)
    expected = np.asarray(palette.convert("RGB"))[..., 0] / 255.0
    np.testing.assert_allclose(decode_image(encode(palette, "PNG"), "red"), expected, atol=1e-7)


def test_grayscale_image_serves_every_channel():
    pixels = gradient()
    data = encode(pixels, "PNG")
    for channel in ["luminance", "red", "green", "blue"]:
        np.testing.assert_allclose(decode_image(data, channel), pixels / 255.0, atol=1e-7)


def test_jpeg_decodes_close_to_the_original():
    pixels = np.dstack([gradient(64, 64)] * 3)
    decoded = decode_image(encode(pixels, "JPEG", quality=95))
    assert decoded.shape == (64, 64)
    assert np.abs(decoded - pixels[..., 0] / 255.0).max() < 0.03


def test_unknown_channel_is_rejected():
    with pytest.raises(ValueError, match="channel"):
        decode_image(encode(gradient(), "PNG"), "alpha")


@pytest.mark.parametrize("data", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_garbage_bytes_raise_invalid_image(data):
    with pytest.raises(InvalidImage):
        decode_image(data)


def test_other_formats_are_refused_by_name():
    with pytest.raises(InvalidImage, match="PNG, TIFF, BMP, JPEG"):
        decode_image(encode(gradient(), "GIF"))


def test_truncated_png_raises_invalid_image():
    noisy = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    data = encode(noisy, "PNG")
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def png_claiming_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header announces width x height."""
    data = bytearray(encode(gradient(8, 8), "PNG"))
    ihdr_start = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    body = bytes(data[ihdr_start - 4 : ihdr_start + 13])
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


def test_oversize_header_is_rejected_before_decoding():
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="too large"):
        decode_image(png_claiming_size(5000, 5000))  # 25 Mpx > 16.7 Mpx default, below PIL's own limit
    with pytest.raises(InvalidImage, match="too large"):
        decode_image(png_claiming_size(200_000, 200_000))  # PIL's DecompressionBombError
    assert time.perf_counter() - started < 1.0


def test_max_pixels_is_configurable():
    data = encode(gradient(40, 50), "PNG")
    assert decode_image(data, max_pixels=2000).shape == (40, 50)
    with pytest.raises(InvalidImage, match="at most 1999"):
        decode_image(data, max_pixels=1999)


def test_unsupported_mode_is_named_in_the_error():
    floats = Image.fromarray(np.zeros((8, 8), np.float32))
    with pytest.raises(InvalidImage, match="unsupported image mode 'F'"):
        decode_image(encode(floats, "TIFF"))


def test_resize_gives_network_input_within_unit_range():
    checkerboard = (np.indices((9, 13)).sum(axis=0) % 2).astype(np.float32)  # bicubic overshoots on it
    resized = resize_for_network(checkerboard)
    assert resized.shape == (INPUT_SIZE, INPUT_SIZE) and resized.dtype == np.float32
    assert resized.min() == 0.0 and resized.max() == 1.0
    np.testing.assert_allclose(resize_for_network(np.full((60, 90), 0.25, np.float32)), 0.25, atol=1e-6)


def test_load_cell_decodes_and_resizes():
    cell = load_cell(encode(gradient(57, 83), "PNG"))
    assert cell.shape == (INPUT_SIZE, INPUT_SIZE) and cell.dtype == np.float32
    assert cell[0, 0] < 0.05 and cell[-1, -1] > 0.95


def test_cells_are_resized_to_the_network_input():
    from worker.ml.network import INPUT_SIZE as NETWORK_INPUT_SIZE

    assert INPUT_SIZE == NETWORK_INPUT_SIZE
