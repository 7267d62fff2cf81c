import io

import numpy as np
from PIL import Image

from worker.ml.render import array_npy, colorize, heatmap_png


def test_positive_relevance_is_red_negative_blue_and_zero_white():
    relevance = np.zeros((4, 4))
    relevance[0, 0], relevance[3, 3] = 1.0, -1.0
    rgb = colorize(relevance)
    red, white, blue = rgb[0, 0], rgb[1, 1], rgb[3, 3]
    assert red[0] > 100 and red[2] < 50
    assert blue[2] > 90 and blue[0] < 10
    assert (white == 247).all()


def test_an_all_zero_map_renders_white_and_a_png_round_trips():
    png = heatmap_png(np.zeros((112, 112)))
    image = Image.open(io.BytesIO(png))
    assert image.size == (112, 112) and image.mode == "RGB"
    assert (np.asarray(image) == 247).all()


def test_raw_arrays_are_npy_float32():
    array = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
    loaded = np.load(io.BytesIO(array_npy(array)))
    assert loaded.dtype == np.float32 and (loaded == array).all()
