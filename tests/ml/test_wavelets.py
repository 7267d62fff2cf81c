import numpy as np
import pywt
import torch

from worker.ml.wavelets import haar_numpy, haar_torch


def test_numpy_transform_is_approximation_and_detail_sum():
    images = np.random.default_rng(0).random((3, 112, 112)).astype(np.float32)
    coefficients = haar_numpy(images)
    assert coefficients.shape == (3, 2, 56, 56) and coefficients.dtype == np.float32
    approximation, (horizontal, vertical, diagonal) = pywt.dwt2(images[1], "haar")
    np.testing.assert_allclose(coefficients[1, 0], approximation, atol=1e-6)
    np.testing.assert_allclose(coefficients[1, 1], horizontal + vertical + diagonal, atol=1e-6)


def test_torch_op_agrees_with_pywavelets():
    images = np.random.default_rng(1).random((4, 112, 112))
    approximation, (horizontal, vertical, diagonal) = pywt.dwt2(images, "haar", axes=(-2, -1))
    in_float64 = haar_torch(torch.from_numpy(images))
    assert in_float64.shape == (4, 2, 56, 56) and in_float64.dtype == torch.float64
    np.testing.assert_allclose(in_float64[:, 0].numpy(), approximation, rtol=0, atol=1e-12)
    np.testing.assert_allclose(in_float64[:, 1].numpy(), horizontal + vertical + diagonal, rtol=0, atol=1e-12)
    # The float32 (N, 1, H, W) batches that training feeds it.
    in_float32 = haar_torch(torch.from_numpy(images).float().unsqueeze(1))
    np.testing.assert_allclose(in_float32.numpy(), haar_numpy(images.astype(np.float32)), rtol=0, atol=1e-6)


def test_flat_image_has_no_detail():
    coefficients = haar_torch(torch.full((1, 112, 112), 0.3))
    torch.testing.assert_close(coefficients[:, 0], torch.full((1, 56, 56), 0.6))
    torch.testing.assert_close(coefficients[:, 1], torch.zeros(1, 56, 56))
