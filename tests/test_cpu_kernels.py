"""The CPU fast paths (numpy attention, rational-erf GELU) equal MLX's own kernels."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from nightingale_mlx.models import cpu_kernels
from nightingale_mlx.models.cpu_kernels import attention, gelu

pytestmark = pytest.mark.cpu_paths  # fast path vs MLX's kernel: meaningless with NIGHTINGALE_MLX_NATIVE=1


def _qkv(shape, dtype=mx.float32):
    keys = mx.random.split(mx.random.key(0), 3)
    return [(2.0 * mx.random.normal(shape, key=k)).astype(dtype) for k in keys]


@pytest.mark.parametrize("T", [7, 300])  # 300: 2 x 8 x 300 x 300 scores are split over two threads
def test_attention_matches_fused_kernel(T):
    assert cpu_kernels.on_cpu()
    q, k, v = _qkv((2, 8, T, 16))
    bias = mx.random.normal((2, 8, T, T), key=mx.random.key(1))
    for b in (None, bias):
        got = attention(q, k, v, 0.25, bias=b)
        want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=b)
        assert got.shape == want.shape and got.dtype == mx.float32
        np.testing.assert_allclose(np.array(got), np.array(want), atol=2e-5)  # MLX exp: 2e-6 rel


def test_attention_one_query_over_a_longer_cache():
    """T3's decode step: one query row per (batch, head) against every cached key."""
    q, _, _ = _qkv((2, 16, 1, 64))
    _, k, v = _qkv((2, 16, 37, 64))
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125)
    np.testing.assert_allclose(np.array(attention(q, k, v, 0.125)), np.array(want), atol=2e-5)


def test_attention_keeps_fp16():
    q, k, v = _qkv((1, 2, 5, 8), mx.float16)
    got = attention(q, k, v, 0.5)
    assert got.dtype == mx.float16
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.5)
    np.testing.assert_allclose(np.array(got, np.float32), np.array(want, np.float32), atol=8e-3)  # fp16 ulp at |x| 4-8: 4e-3


def test_gelu_matches_erf_gelu():
    x = mx.linspace(-12, 12, 100_001)
    np.testing.assert_allclose(np.array(gelu(x)), np.array(nn.gelu(x)), atol=2e-6)
    h = x.astype(mx.float16)
    assert gelu(h).dtype == mx.float16
    np.testing.assert_allclose(np.array(gelu(h), np.float32), np.array(nn.gelu(h), np.float32), atol=1e-2)


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_reduced_precision_linears_match_mlx_kernels(bits):
    from nightingale_mlx import quant
    from nightingale_mlx.models.cpu_kernels import BLAS_MIN_ROWS, BlasLinear, BlasQuantizedLinear

    layer = nn.Linear(128, 96)
    holder = nn.Module()
    holder.layers = [layer]
    quant.apply(holder, bits, 64)
    layer = holder.layers[0]
    assert type(layer) is (BlasLinear if bits == 16 else BlasQuantizedLinear)
    base = nn.Linear if bits == 16 else nn.QuantizedLinear
    for rows in (1, BLAS_MIN_ROWS - 1, 40):  # matvec-like rows keep MLX's kernel; many rows take BLAS
        x = mx.random.normal((2, rows, 128), key=mx.random.key(rows)).astype(mx.float16)
        got, want = layer(x), base.__call__(layer, x)
        assert got.dtype == mx.float16 and got.shape == (2, rows, 96)
        # fp32 accumulation against MLX's fp16 one: within a few fp16 ulps of outputs ~ +-3
        np.testing.assert_allclose(np.array(got, np.float32), np.array(want, np.float32), atol=2e-2)


@pytest.mark.parametrize("shape", [(1, 1, 1024), (2, 1, 1024), (1, 3, 64)])  # decode, CFG decode, narrow
def test_fp32_decode_linears_match_mlx(shape):
    """Few-row fp32 products take sgemv: the preloaded OpenBLAS's when there is one (CI runs these
    tests with and without it), else the blocked numpy gemv (two threads from 512 weight rows)."""
    import os

    from nightingale_mlx import quant
    from nightingale_mlx.models.cpu_kernels import BlasLinear, _mlx_openblas

    assert (_mlx_openblas() is not None) == ("openblas" in os.environ.get("LD_PRELOAD", ""))

    holder = nn.Module()
    holder.layers = [nn.Linear(shape[-1], 1100), nn.Linear(shape[-1], 8, bias=False)]
    quant.apply(holder, 32, 64)
    x = mx.random.normal(shape, key=mx.random.key(3))
    for layer in holder.layers:
        assert type(layer) is BlasLinear
        got, want = layer(x), nn.Linear.__call__(layer, x)
        assert got.dtype == mx.float32 and got.shape == want.shape
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)
    layer = holder.layers[0]
    layer.weight = layer.weight * 2  # a replaced weight is seen (the numpy view is cached per array)
    np.testing.assert_allclose(np.array(layer(x)), np.array(nn.Linear.__call__(layer, x)), rtol=1e-5, atol=1e-5)


def test_gemv_strided_rows_take_the_numpy_path():
    """sgemv through ctypes reads raw pointers: rows that are not one contiguous fp32 block (a view)
    take numpy's path, so the product stays right either way."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((600, 64), dtype=np.float32)
    x = rng.standard_normal((2, 128), dtype=np.float32)[:, ::2]
    np.testing.assert_allclose(cpu_kernels.gemv(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cpu_kernels.gemv(np.ascontiguousarray(x), w), x @ w.T, rtol=1e-5, atol=1e-5)


def test_exp_matches_mlx():
    from nightingale_mlx.models.cpu_kernels import exp

    x = mx.linspace(-80, 20, 10_001)
    np.testing.assert_allclose(np.array(exp(x)), np.array(mx.exp(x)), rtol=1e-5)
    assert exp(x.astype(mx.float16)).dtype == mx.float16


@pytest.mark.parametrize("backbone", ["llama", "gpt2"])
def test_t3_cpu_attention_matches_mlx_lm(backbone):
    """T3's attention over its KV cache (Llama and GPT-2 backbones) runs in numpy on the CPU: the
    prefill (causal, many rows), a second many-row chunk after it, and one-query decode steps."""
    from mlx_lm.models.cache import KVCache
    from mlx_lm.models.gpt2 import Attention as GPT2Attention
    from mlx_lm.models.llama import Attention as LlamaAttention

    from nightingale_mlx.config import T3Config
    from nightingale_mlx.models.t3 import T3, CpuAttention, GPT2CpuAttention

    cfg = T3Config(backbone=backbone, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=2, intermediate_size=256)
    layer = T3(cfg).tfmr.layers[0]
    attn, fast, base = ((layer.attn, GPT2CpuAttention, GPT2Attention) if backbone == "gpt2"
                        else (layer.self_attn, CpuAttention, LlamaAttention))
    assert type(attn) is fast
    ours, theirs = KVCache(), KVCache()
    for step, rows in enumerate([6, 3, 1, 1, 1]):  # prefill, a chunk over a filled cache, decode steps
        x = mx.random.normal((1, rows, 128), key=mx.random.key(4 + step))
        mask = "causal" if rows > 1 else None
        got, want = attn(x, mask, ours), base.__call__(attn, x, mask, theirs)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=2e-6)
    assert ours.offset == theirs.offset == 12
    np.testing.assert_array_equal(np.array(ours.keys[..., :12, :]), np.array(theirs.keys[..., :12, :]))


def test_gelu_tanh_matches_mlx():
    """GPT-2's tanh GELU in numpy equals MLX's gelu_approx to float32 rounding, over the range
    where tanh saturates, and keeps the input's dtype."""
    from nightingale_mlx.models.cpu_kernels import gelu_tanh

    x = mx.linspace(-12, 12, 100_001)
    np.testing.assert_allclose(np.array(gelu_tanh(x)), np.array(nn.gelu_approx(x)), rtol=2e-6, atol=2e-7)
    assert gelu_tanh(x.astype(mx.float16)).dtype == mx.float16


def test_snake_matches_mlx():
    """HiFT's Snake in numpy equals the compiled MLX one (Metal's) in fp32 and fp16, large
    arguments and near-zero alphas included."""
    from nightingale_mlx.models.hift import SNAKE_EPS, _snake
    from nightingale_mlx.models.cpu_kernels import snake

    x = mx.random.normal((2, 300, 64), key=mx.random.key(0)) * 20
    alpha = mx.concatenate([mx.array([0.0, 1e-6, 50.0]), mx.random.uniform(0.1, 3, (61,), key=mx.random.key(1))])
    for dtype in (mx.float32, mx.float16):
        got, want = snake(x.astype(dtype), alpha.astype(dtype), SNAKE_EPS), _snake(x.astype(dtype), alpha.astype(dtype))
        assert got.dtype == want.dtype == dtype
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)),
                                   rtol=2e-3 if dtype == mx.float16 else 1e-5, atol=1e-3 if dtype == mx.float16 else 2e-5)


@pytest.mark.parametrize("backbone,batch", [("gpt2", 1), ("llama", 1), ("llama", 2), ("llama-rope", 2)])
def test_numpy_decode_step_matches_mlx_lm(backbone, batch):
    """The fp32 stacks' numpy decode steps (GPT-2; the Llama at batch 1 and as the CFG pair, with
    Llama 3 and plain RoPE) equal mlx-lm's blocks (NIGHTINGALE_MLX_NATIVE's path): steps after a
    prefill, across the cache's growth (256 rows), cache contents included."""
    from mlx.utils import tree_flatten, tree_unflatten

    from nightingale_mlx.config import T3Config
    from nightingale_mlx.models import cpu_kernels
    from nightingale_mlx.models.t3 import T3
    from tests.reference.weights import random_state_dict

    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    if backbone == "gpt2":
        cfg = T3Config(backbone="gpt2", **sizes, text_vocab_size=300, speech_vocab_size=6563, learned_input_pos=False,
                       use_perceiver=False, emotion_adv=False, speech_head_bias=True, repeat_bos=False,
                       bos_always_penalised=False, prefill_token_stops=False, alignment_heads=[])
    else:
        cfg = T3Config(**sizes, head_dim=16, intermediate_size=96, text_vocab_size=300, speech_vocab_size=600,
                       **({"rope_scaling": None, "rope_theta": 10000.0} if backbone == "llama-rope" else {}))
    model = T3(cfg)
    spec = [(k, v.shape) for k, v in tree_flatten(model.parameters())]
    model.update(tree_unflatten([(k, mx.array(v)) for k, v in random_state_dict(spec, 5).items()]))
    prefill = mx.random.normal((batch, 250, 64), key=mx.random.key(0))
    ours, theirs = model.make_cache(), model.make_cache()
    model(prefill, ours)
    model(prefill, theirs)
    for step in range(10):
        x = mx.random.normal((batch, 1, 64), key=mx.random.key(step + 1))
        assert model.tfmr.numpy_step_fits(x)  # the path under test is the one taken
        got, _ = model(x, ours)
        cpu_kernels.MLX_NATIVE = True
        try:
            want, _ = model(x, theirs)
        finally:
            cpu_kernels.MLX_NATIVE = False
        assert got.shape == want.shape == (batch, 1, 64)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=2e-5)
    assert ours[0].offset == theirs[0].offset == 260 and ours[0].keys.shape[2] == 512
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.array(a.keys[..., :260, :]), np.array(b.keys[..., :260, :]), rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(np.array(a.values[..., :260, :]), np.array(b.values[..., :260, :]), rtol=1e-5, atol=2e-5)
