"""HiFT vocoder unit tests: DSP pieces against numpy formulas, the fast conv rewrites against MLX's
kernels, the converter's mapping, shapes and bad input. Parity with the reference is in
test_hift_parity.py."""

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.sanitize.common import ConversionError
from convert.sanitize.hift import hift_dims, sanitize_hift
from nightingale_mlx.audio.fade import trim_fade, trim_fade_window
from nightingale_mlx.config import HiFTConfig
from nightingale_mlx.models import hift as hift_module
from nightingale_mlx.models.f0 import harmonic_phases, upsample_nearest
from nightingale_mlx.models.hift import HiFTGenerator, conv_transpose1d, dilated_conv1d, snake
from tests.reference import hift_harness
from tests.reference.sizes import TINY_F0, TINY_HIFT
from tests.reference.weights import random_state_dict

SR, FACTOR, H = 24000, 480, 9


def tiny_config() -> HiFTConfig:
    return HiFTConfig(base_channels=TINY_HIFT["base_channels"], f0_cond_channels=TINY_F0["cond_channels"])


@pytest.fixture(scope="module")
def tiny_state(fixtures_dir):
    """The tiny fixture's mel2wav tensors in the original names (weight norm unfolded)."""
    fx = np.load(fixtures_dir / "hift_tiny_mtl-v2.npz")
    return random_state_dict(json.loads(str(fx["spec"])), int(fx["seed"]))


def circular_error(a, b) -> np.ndarray:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.abs(d - np.round(d))  # cycles, wrap-around aware


def test_phase_accumulator_matches_float64_over_60s():
    # 60 s of a varying 80-300 Hz track with unvoiced stretches (small f0 still advances phase).
    frames = 60 * SR // FACTOR
    rng = np.random.default_rng(0)
    f0 = hift_harness.f0_track(frames, rng)
    f0[0, 100:140] = rng.uniform(0, 5, 40)
    ours = np.array(harmonic_phases(mx.array(f0), H, SR, FACTOR))[0]  # (N, 9)

    inc = np.repeat(f0[0].astype(np.float64), FACTOR)[:, None] * np.arange(1, H + 1) / SR
    total = np.cumsum(inc, axis=0)
    err = circular_error(ours, total % 1)
    assert err.max() < 1e-3, f"phase error {err.max():.2e} cycles"
    # The reference's way (sum rounded to fp32, then % 1) misses the same bound: the check has teeth.
    assert circular_error(total.astype(np.float32) % 1, total % 1).max() > 1e-3


def test_snake_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 5)).astype(np.float32)
    alpha = rng.uniform(0.1, 2.0, 5).astype(np.float32)
    alpha[0] = 0.0  # alpha + 1e-9 keeps the division finite; the sine term then vanishes
    want = x + 1 / (alpha.astype(np.float64) + 1e-9) * np.sin(alpha * x.astype(np.float64)) ** 2
    np.testing.assert_allclose(np.array(snake(mx.array(x), mx.array(alpha))), want, rtol=1e-5, atol=1e-5)


def test_f0_upsampling_is_nearest_and_sets_voicing_per_frame():
    f0 = mx.array([[5.0, 50.0, 0.0, 200.0]])
    np.testing.assert_array_equal(np.array(upsample_nearest(f0, FACTOR))[0], np.repeat([5.0, 50.0, 0.0, 200.0], FACTOR))
    hift = HiFTGenerator(tiny_config())
    N = 4 * FACTOR
    src = np.array(hift.source(f0, phases=mx.zeros((1, H)), noise=mx.zeros((1, N, H))))[0, :, 0]
    unvoiced = float(np.tanh(np.array(hift.m_source.l_linear.bias)[0]))  # sine * uv = 0, no noise
    voiced = np.repeat([False, True, False, True], FACTOR)
    np.testing.assert_allclose(src[~voiced], unvoiced, atol=1e-7)
    # The sine path moves voiced samples off the unvoiced level (a few may cross it by chance).
    assert np.mean(np.abs(src[voiced] - unvoiced) > 1e-6) > 0.95


@pytest.mark.parametrize("kernel, stride, padding", [(16, 8, 4), (11, 5, 3), (7, 3, 2), (5, 2, 0), (3, 3, 1)])
def test_conv_transpose_rewrite_equals_mlx(kernel, stride, padding):
    rng = np.random.default_rng(kernel)
    x = mx.array(rng.standard_normal((2, 9, 6)).astype(np.float32))
    w = mx.array(rng.standard_normal((4, kernel, 6)).astype(np.float32))
    want = mx.conv_transpose1d(x, w, stride=stride, padding=padding)
    got = conv_transpose1d(x, w, stride, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)


@pytest.mark.parametrize("kernel, dilation", [(3, 3), (7, 5), (11, 5), (3, 1)])
def test_dilated_conv_rewrite_equals_mlx(kernel, dilation):
    rng = np.random.default_rng(kernel + dilation)
    x = mx.array(rng.standard_normal((2, 40, 6)).astype(np.float32))
    w = mx.array(rng.standard_normal((5, kernel, 6)).astype(np.float32))
    pad = dilation * (kernel - 1) // 2
    want = mx.conv1d(x, w, padding=pad, dilation=dilation)
    np.testing.assert_allclose(np.array(dilated_conv1d(x, w, dilation, pad)), np.array(want), atol=1e-5)


def test_both_conv_paths_give_the_same_vocoder(monkeypatch):
    hift = HiFTGenerator(tiny_config())
    mel = mx.random.normal((1, 6, 80), key=mx.random.key(0))
    src = hift.source(hift.predict_f0(mel), key=mx.random.key(1))
    fast = np.array(hift.decode_spectrum(mel, src))
    monkeypatch.setattr(hift_module, "on_cpu", lambda: False)  # MLX's own conv kernels
    np.testing.assert_allclose(np.array(hift.decode_spectrum(mel, src)), fast, atol=1e-4)


def test_trim_fade_values():
    n = 480
    want = np.concatenate([np.zeros(n), (np.cos(np.linspace(np.pi, 0, n)) + 1) / 2])
    np.testing.assert_allclose(np.array(trim_fade_window()), want, atol=1e-6)
    wav = mx.ones((1, 1500))
    out = np.array(trim_fade(wav))
    np.testing.assert_allclose(out[0, :960], want, atol=1e-6)
    np.testing.assert_array_equal(out[0, 960:], 1.0)
    np.testing.assert_allclose(np.array(trim_fade(mx.ones((1, 700))))[0], want[:700], atol=1e-6)


def _legacy_names(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        out[k.replace(".parametrizations.weight.original1", ".weight_v")] = v
    return out


def test_weight_norm_folding_both_forms(tiny_state):
    new = sanitize_hift(tiny_state)
    old = sanitize_hift(_legacy_names(tiny_state))
    assert new.keys() == old.keys()
    for k in new:
        np.testing.assert_array_equal(new[k], old[k])

    def folded(prefix):  # torch weight_norm(dim=0): g * v / ||v||, the norm over all dims but 0
        g = tiny_state[f"mel2wav.{prefix}.parametrizations.weight.original0"].astype(np.float64)
        v = tiny_state[f"mel2wav.{prefix}.parametrizations.weight.original1"].astype(np.float64)
        return g * v / np.sqrt((v**2).sum(axis=(1, 2), keepdims=True))

    conv = folded("resblocks.4.convs1.2")  # Conv1d (O, I, K) -> MLX (O, K, I)
    np.testing.assert_allclose(new["resblocks.4.convs1.2.weight"], conv.transpose(0, 2, 1), rtol=1e-5, atol=1e-7)
    up = folded("ups.1")  # ConvTranspose1d (I, O, K), dim 0 = in_channels -> MLX (O, K, I)
    np.testing.assert_allclose(new["ups.1.weight"], up.transpose(1, 2, 0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(new["source_downs.0.weight"], tiny_state["mel2wav.source_downs.0.weight"].transpose(0, 2, 1))


def test_sanitize_maps_every_tensor_and_reads_dims(tiny_state):
    weights = sanitize_hift({**tiny_state, "flow.encoder_proj.bias": np.zeros(80, np.float32)})
    assert HiFTConfig.from_dict(hift_dims(weights)) == tiny_config()
    hift = HiFTGenerator(tiny_config())
    hift.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)


def test_sanitize_rejects_what_it_does_not_know(tiny_state):
    with pytest.raises(ConversionError, match="mel2wav.ups.0.extra"):
        sanitize_hift({**tiny_state, "mel2wav.ups.0.extra": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match="no mel2wav"):
        sanitize_hift({"flow.encoder_proj.bias": np.zeros(80, np.float32)})
    broken = dict(tiny_state)
    del broken["mel2wav.conv_post.parametrizations.weight.original1"]
    with pytest.raises(ConversionError, match="conv_post"):
        sanitize_hift(broken)


def test_vocoder_shapes_and_injected_randomness():
    hift = HiFTGenerator(tiny_config())
    mel = mx.random.normal((1, 5, 80), key=mx.random.key(2)) - 6
    a = hift(mel, key=mx.random.key(3))
    assert a.shape == (1, 5 * FACTOR) and hift.predict_f0(mel).shape == (1, 5)
    np.testing.assert_array_equal(np.array(hift(mel, key=mx.random.key(3))), np.array(a))
    assert not np.array_equal(np.array(hift(mel, key=mx.random.key(4))), np.array(a))
    phases, noise = mx.zeros((1, H)), mx.zeros((1, 5 * FACTOR, H))
    f0 = mx.full((1, 5), 150.0)
    b = hift(mel, phases=phases, noise=noise, f0=f0)
    np.testing.assert_array_equal(np.array(hift(mel, phases=phases, noise=noise, f0=f0)), np.array(b))
    assert np.abs(np.array(b)).max() <= hift.cfg.audio_limit


def test_bad_input_is_a_clear_value_error():
    hift = HiFTGenerator(tiny_config())
    with pytest.raises(ValueError, match="channels-last"):
        hift(mx.zeros((1, 80, 5)))
    with pytest.raises(ValueError, match="noise"):
        hift(mx.zeros((1, 5, 80)), noise=mx.zeros((1, 100, H)))
    with pytest.raises(ValueError, match="phases"):
        hift(mx.zeros((1, 5, 80)), phases=mx.zeros((1, 3)))
    with pytest.raises(ValueError, match="f0"):
        hift(mx.zeros((1, 5, 80)), f0=mx.zeros((1, 4)))


@pytest.mark.slow
def test_full_size_s3gen_hift_maps_every_tensor(fixtures_dir, tmp_path):
    spec = json.loads((fixtures_dir / "hift_full_spec.json").read_text())  # the reference's own keys
    save_file(random_state_dict(spec, 0), str(tmp_path / "s3gen.safetensors"))
    hift = hift_harness.load_hift(tmp_path / "s3gen.safetensors")  # strict: nothing missing or extra
    assert hift.cfg == HiFTConfig()
    wav = hift(mx.zeros((1, 3, 80)) - 6, key=mx.random.key(0))
    assert wav.shape == (1, 3 * FACTOR)
