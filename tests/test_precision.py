"""Reduced-precision numerics: fp16 components stay finite and equal to fp32 within fp16's tolerance
at the edge values trained weights reach (tiny or zero Snake alphas, large activations)."""

import mlx.core as mx
import numpy as np
import pytest

from nightingale_mlx.models.hift import snake
from nightingale_mlx.models.unet import mish

FP16_REL = 2.0**-10  # two roundings of fp16 (11-bit significand): the result's and the input's


def _close_to_fp32(got: mx.array, want: np.ndarray, rel: float = FP16_REL):
    got = np.array(got.astype(mx.float32))
    assert np.isfinite(got).all(), f"{np.sum(~np.isfinite(got))} non-finite values"
    np.testing.assert_allclose(got, want, rtol=rel, atol=rel * np.abs(want).max() * 1e-2 + 1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1e-5, -1e-5, 3e-8, 1e-3, 0.5, 1.0, 20.0])
def test_snake_fp16_edge_alphas(alpha):
    x16 = mx.array(np.linspace(-12, 12, 97), dtype=mx.float16)[None, :, None] * mx.ones((1, 1, 4), mx.float16)
    a16 = mx.full((4,), alpha, dtype=mx.float16)
    x, a = np.array(x16.astype(mx.float32), np.float64), np.float64(np.array(a16.astype(mx.float32))[0])
    want = x + (np.sin(a * x) ** 2 / a if a != 0 else 0.0 * x)  # the limit at alpha = 0 is x
    _close_to_fp32(snake(x16, a16), want.astype(np.float32))
    assert snake(x16, a16).dtype == mx.float16


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_mish_reduced_precision_large_inputs(dtype):
    x = mx.array(np.concatenate([np.linspace(-12, 12, 241), [-1e3, -30, 21, 30, 1e3, 6e4]]), dtype=dtype)
    xf = np.array(x.astype(mx.float32), np.float64)
    want = xf * np.tanh(np.logaddexp(0, xf))
    _close_to_fp32(mish(x), want.astype(np.float32), rel=FP16_REL if dtype == mx.float16 else 2.0**-7)
    assert mish(x).dtype == dtype
