"""Unit tests of the S3Gen flow pieces (tiny configs, numpy statements of the reference formulas)."""

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from convert.sanitize.flow import CONV1D, flow_dims, sanitize_flow
from nightingale_mlx.config import FlowConfig
from nightingale_mlx.models.cfm import FlowError, cosine_t_span
from nightingale_mlx.models.conformer import RelPositionMultiHeadedAttention, rel_positions, rel_shift
from nightingale_mlx.models.flow import CausalMaskedDiffWithXvec
from nightingale_mlx.models.unet import Attention, CausalConv1d, timestep_embedding
from tests.reference.sizes import TINY_DECODER, TINY_FLOW


def tiny_flow_config() -> FlowConfig:
    return FlowConfig(
        input_size=TINY_FLOW["width"], encoder_size=TINY_FLOW["width"], encoder_heads=TINY_FLOW["attention_heads"],
        encoder_linear_units=TINY_FLOW["linear_units"], encoder_blocks=TINY_FLOW["num_blocks"],
        decoder_channels=TINY_DECODER["channels"], decoder_heads=TINY_DECODER["num_heads"],
        decoder_head_dim=TINY_DECODER["attention_head_dim"], decoder_blocks=TINY_DECODER["n_blocks"],
        decoder_mid_blocks=TINY_DECODER["num_mid_blocks"],
    )


def torch_layout_state(model) -> dict:
    """Our parameters back in the reference's names and layouts (convs (O, I, K)), flow-prefixed."""
    out = {}
    for k, v in tree_flatten(model.parameters()):
        a = np.array(v)
        out[f"flow.{k}"] = a.transpose(0, 2, 1) if CONV1D.match(k) else a
    return out


def test_rel_shift_matches_the_reference_statement():
    rng = np.random.default_rng(0)
    for t in (1, 2, 5, 9):
        x = rng.standard_normal((2, 3, t, 2 * t - 1)).astype(np.float32)
        # The reference's torch code, in numpy (view == reshape of a contiguous array).
        padded = np.concatenate([np.zeros((2, 3, t, 1), np.float32), x], axis=-1)
        want = padded.reshape(2, 3, 2 * t, t)[:, :, 1:].reshape(x.shape)[..., : x.shape[-1] // 2 + 1]
        got = np.array(rel_shift(mx.array(x)))
        np.testing.assert_array_equal(got, want)
        i, j = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
        np.testing.assert_array_equal(got, x[..., i, t - 1 - i + j])  # relative position i - j


def test_rel_positions_match_espnet_table():
    d, max_len, t = 16, 50, 7
    pos = np.arange(max_len, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, d, 2, dtype=np.float32) * -(math.log(10000.0) / d))
    pe_pos, pe_neg = np.zeros((max_len, d)), np.zeros((max_len, d))
    pe_pos[:, 0::2], pe_pos[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
    pe_neg[:, 0::2], pe_neg[:, 1::2] = np.sin(-pos * div), np.cos(-pos * div)
    pe = np.concatenate([pe_pos[::-1], pe_neg[1:]])
    c = len(pe) // 2
    np.testing.assert_allclose(np.array(rel_positions(t, d))[0], pe[c - t + 1 : c + t], atol=1e-6)


def test_rel_attention_matches_explicit_scores():
    mx.random.seed(0)
    attn = RelPositionMultiHeadedAttention(2, 16)
    attn.pos_bias_u = mx.random.normal((2, 8))
    attn.pos_bias_v = mx.random.normal((2, 8))
    x = mx.random.normal((1, 5, 16))
    pos = rel_positions(5, 16)
    got = np.array(attn(x, pos))
    assert got.shape == (1, 5, 16)
    q = np.array(attn.linear_q(x)).reshape(1, 5, 2, 8)
    k = np.array(attn.linear_k(x)).reshape(1, 5, 2, 8).transpose(0, 2, 1, 3)
    v = np.array(attn.linear_v(x)).reshape(1, 5, 2, 8).transpose(0, 2, 1, 3)
    p = np.array(attn.linear_pos(pos)).reshape(1, 9, 2, 8).transpose(0, 2, 1, 3)
    ac = (q + np.array(attn.pos_bias_u)).transpose(0, 2, 1, 3) @ k.transpose(0, 1, 3, 2)
    bd = np.array(rel_shift(mx.array((q + np.array(attn.pos_bias_v)).transpose(0, 2, 1, 3) @ p.transpose(0, 1, 3, 2))))
    s = (ac + bd) / math.sqrt(8)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ctx = (w @ v).transpose(0, 2, 1, 3).reshape(1, 5, 16)
    np.testing.assert_allclose(got, np.array(attn.linear_out(mx.array(ctx))), atol=1e-5)


@pytest.mark.parametrize("t", [1, 7, 33])
def test_estimator_attention_shapes_without_mask(t):
    attn = Attention(32, heads=2, head_dim=64)
    assert attn(mx.zeros((2, t, 32))).shape == (2, t, 32)
    assert attn.to_q.weight.shape == (128, 32) and attn.to_out[0].weight.shape == (32, 128)


def test_causal_conv_pads_left_and_never_looks_ahead():
    conv = CausalConv1d(4, 3, 3)
    x = mx.random.normal((1, 10, 4))
    y = conv(x)
    assert y.shape == (1, 10, 3)
    x2 = mx.concatenate([x[:, :6], mx.random.normal((1, 4, 4))], axis=1)  # change the future only
    np.testing.assert_allclose(np.array(conv(x2))[:, :6], np.array(y)[:, :6], atol=1e-6)
    # Frame 0 sees two zero frames and itself.
    w, b = np.array(conv.weight), np.array(conv.bias)  # (O, K, I)
    np.testing.assert_allclose(np.array(y)[0, 0], w[:, 2] @ np.array(x)[0, 0] + b, atol=1e-5)


def test_time_embedding_formula():
    t = np.array([0.0, 0.02, 0.5, 1.0], np.float32)
    half = 160
    freqs = np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))
    arg = 1000 * t[:, None].astype(np.float64) * freqs[None]
    want = np.concatenate([np.sin(arg), np.cos(arg)], axis=-1)
    got = np.array(timestep_embedding(mx.array(t), 320))
    assert got.shape == (4, 320)
    np.testing.assert_allclose(got, want, atol=2e-4)  # fp32 arguments up to 1000 rad


def test_euler_schedule_is_cosine():
    for n in (1, 2, 10):
        want = 1 - np.cos(np.linspace(0, 1, n + 1) * 0.5 * np.pi)
        np.testing.assert_allclose(np.array(cosine_t_span(n)), want, atol=1e-6)
    np.testing.assert_allclose(np.array(cosine_t_span(10))[:3], [0.0, 0.01231166, 0.04894348], atol=1e-7)


@pytest.fixture(scope="module")
def tiny_flow():
    mx.random.seed(1)
    return CausalMaskedDiffWithXvec(tiny_flow_config())


def _inputs(n=6, n_prompt=4, tm=8):
    rng = np.random.default_rng(0)
    return (mx.array(rng.integers(0, 6561, (1, n))), mx.array(rng.integers(0, 6561, (1, n_prompt))),
            mx.array(rng.standard_normal((1, tm, 80)).astype(np.float32)),
            mx.array(rng.standard_normal((1, 192)).astype(np.float32)))


@pytest.mark.parametrize("tm,frames", [(8, 12), (9, 11), (7, 13)])
def test_inference_frame_counts(tiny_flow, tm, frames):
    tokens, prompt, feat, emb = _inputs(tm=tm)
    mel = tiny_flow.inference(tokens, prompt, feat, emb, n_timesteps=2, key=mx.random.key(0))
    assert mel.shape == (1, frames, 80)  # 2 (Np + N) - Tm


def test_noise_is_injectable_and_key_is_deterministic(tiny_flow):
    tokens, prompt, feat, emb = _inputs()
    noise = mx.random.normal((1, 20, 80), key=mx.random.key(3))
    a = tiny_flow.inference(tokens, prompt, feat, emb, n_timesteps=2, noise=noise)
    b = tiny_flow.inference(tokens, prompt, feat, emb, n_timesteps=2, key=mx.random.key(3))
    np.testing.assert_array_equal(np.array(a), np.array(b))
    steps = list(tiny_flow.trajectory(tokens, prompt, feat, emb, n_timesteps=3, noise=noise))
    assert len(steps) == 4 and steps[0].shape == (1, 20, 80)  # mu, then x after each step


@pytest.mark.parametrize("change,match", [
    (dict(tokens=mx.zeros((1, 0), mx.int32)), "no speech tokens"),
    (dict(tokens=mx.array([[1, 6562]])), "0..6560"),
    (dict(prompt_feat=mx.zeros((1, 80, 8))), "channels-last"),
    (dict(prompt_feat=mx.zeros((1, 40, 80))), "prompt mel has 40 frames"),
    (dict(embedding=mx.zeros((1, 256))), "x-vector"),
    (dict(noise=mx.zeros((1, 19, 80))), "noise must be"),
])
def test_bad_input_is_a_clear_error(tiny_flow, change, match):
    tokens, prompt, feat, emb = _inputs()
    args = {**dict(tokens=tokens, prompt_tokens=prompt, prompt_feat=feat, embedding=emb), **change}
    with pytest.raises(FlowError, match=match):
        tiny_flow.inference(**args, n_timesteps=1)
    assert issubclass(FlowError, ValueError)


def test_sanitize_round_trips_every_tensor_and_reads_dims(tiny_flow):
    state = torch_layout_state(tiny_flow)
    state["hift.something"] = np.zeros(3, np.float32)  # other S3Gen parts are not the flow's
    ours = dict(tree_flatten(tiny_flow.parameters()))
    mapped = sanitize_flow(state)
    assert sorted(mapped) == sorted(ours)
    for k, v in mapped.items():
        np.testing.assert_array_equal(v, np.array(ours[k]), err_msg=k)
    convs = sorted(k for k in ours if CONV1D.match(k))
    assert len(convs) == 3 + 3 * (1 + 2 + 1) + 2 + 2  # encoder, resnets (block1/2, res_conv), skips, final
    assert flow_dims(state) == {k: v for k, v in tiny_flow_config().to_dict().items() if k in flow_dims(state)}
