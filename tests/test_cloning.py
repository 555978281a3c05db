"""Cloning models: conversion errors, strict load, window rules, segment pooling, BN folding, crops."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from convert.checkpoint import CheckpointError
from safetensors.numpy import save_file

from convert.cloning import config_section, convert_cloning
from convert.sanitize.cloning import _fold
from convert.sanitize.common import ConversionError
from nightingale_mlx import model_io, quant
from nightingale_mlx.config import CloningConfig, VoiceEncoderConfig
from nightingale_mlx.models.campplus import segment_pool
from nightingale_mlx.models.voice_encoder import num_partials
from nightingale_mlx.voice import CLONING_FILE, CloningModels, load_cloning, prepare_voice
from tests.reference.sizes import TINY_CAMPPLUS, TINY_FCM_CHANNELS, TINY_S3TOKENIZER, TINY_VE

TINY = CloningConfig(
    voice_encoder=dict(hidden_size=TINY_VE["ve_hidden_size"]),
    s3_tokenizer=dict(n_state=TINY_S3TOKENIZER["n_audio_state"], n_head=TINY_S3TOKENIZER["n_audio_head"],
                      n_layer=TINY_S3TOKENIZER["n_audio_layer"]),
    campplus=dict(m_channels=TINY_FCM_CHANNELS, init_channels=TINY_CAMPPLUS["init_channels"],
                  growth_rate=TINY_CAMPPLUS["growth_rate"], bn_channels=4 * TINY_CAMPPLUS["growth_rate"]),
)


def speechlike(seconds, sr=16000, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (wav + 0.01 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    m = CloningModels(TINY)
    m.eval()
    return m


@pytest.mark.parametrize("frames,expected", [(1, (1, 160)), (160, (1, 160)), (237, (2, 237)), (300, (3, 314)),
                                             (365, (4, 391)), (400, (4, 391))])
def test_partial_window_rule(frames, expected):
    # n, rem = divmod(max(T - 160 + 77, 0), 77); one more if n == 0 or (rem + 83) / 160 >= 0.8
    assert num_partials(frames, VoiceEncoderConfig()) == expected


def test_segment_pool_averages_the_last_partial_segment():
    x = np.random.default_rng(0).standard_normal((1, 250, 3)).astype(np.float32)
    ours = np.array(segment_pool(mx.array(x)))
    expected = np.concatenate([np.repeat(x[:, s:s + 100].mean(1, keepdims=True), min(100, 250 - s), 1)
                               for s in range(0, 250, 100)], axis=1)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_batchnorm_folding_equals_conv_then_bn():
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    bn = dict(weight=rng.random(4) + 0.5, bias=rng.standard_normal(4), running_mean=rng.standard_normal(4),
              running_var=rng.random(4) + 0.5)
    expected = (x @ w.T - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
    fw, fb = _fold(w, None, bn)
    np.testing.assert_allclose(x @ fw.T + fb, expected, atol=1e-5)
    no_affine = {k: bn[k] for k in ("running_mean", "running_var")}
    fw, fb = _fold(w, None, no_affine)
    np.testing.assert_allclose(x @ fw.T + fb, (x @ w.T - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5),
                               atol=1e-5)


def test_prepare_voice_crops_and_bounds(models, monkeypatch):
    seen = {}
    embed = models.ve.embed_wav
    monkeypatch.setattr(models.ve, "embed_wav", lambda wav: seen.setdefault("ve", wav.size) and embed(wav[:16000]))
    voice = prepare_voice(models, speechlike(61.0), 16000)
    assert voice.prompt_tokens.shape == (1, 150)  # 6 s at 25 tokens/s
    assert voice.gen_prompt_feat.shape == (1, 500, 80)  # 10 s at 50 frames/s
    assert voice.gen_prompt_token.shape == (1, 250)
    assert seen["ve"] == 60 * 16000  # the voice encoder's input is bounded at 60 s
    assert voice.speaker_emb.shape == (1, 256) and voice.gen_embedding.shape == (1, 192)
    tokens = np.array(voice.prompt_tokens)
    assert tokens.min() >= 0 and tokens.max() < 6561


def test_prepare_voice_accepts_other_rates(models):
    voice = prepare_voice(models, speechlike(1.5, sr=44100), 44100)
    assert voice.gen_prompt_feat.shape[1] == int(np.ceil(1.5 * 24000)) // 480


def _write_checkpoint(models, directory):
    """Our tiny random models written back in the reference's names (inverse of the sanitizer)."""
    flat = {k: np.array(v) for k, v in tree_flatten(models.parameters())}
    ve = {}
    for k in range(3):
        ve[f"lstm.weight_ih_l{k}"] = flat[f"ve.lstm.{k}.Wx"]
        ve[f"lstm.weight_hh_l{k}"] = flat[f"ve.lstm.{k}.Wh"]
        ve[f"lstm.bias_ih_l{k}"] = flat[f"ve.lstm.{k}.bias"]
        ve[f"lstm.bias_hh_l{k}"] = np.zeros_like(flat[f"ve.lstm.{k}.bias"])
    ve.update({"proj.weight": flat["ve.proj.weight"], "proj.bias": flat["ve.proj.bias"],
               "similarity_weight": np.array([10.0], np.float32), "similarity_bias": np.array([-5.0], np.float32)})
    directory.mkdir(parents=True, exist_ok=True)
    save_file(ve, str(directory / "ve.safetensors"))
    return ve


def test_conversion_errors(tmp_path, models):
    with pytest.raises(CheckpointError, match="no ve.pt or ve.safetensors"):
        convert_cloning(tmp_path, "en", quant.Recipe.parse("fp32"))
    _write_checkpoint(models, tmp_path)
    save_file({"flow.x": np.zeros(2, np.float32)}, str(tmp_path / "s3gen.safetensors"))
    with pytest.raises(ConversionError, match="tokenizer"):
        convert_cloning(tmp_path, "en", quant.Recipe.parse("fp32"))


def test_strict_load_and_round_trip(tmp_path, models):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model_io.save_weights(models, model_dir / CLONING_FILE)
    section = config_section(TINY, quant.Recipe.parse("fp32"))
    loaded = load_cloning(model_dir, section)
    wav = speechlike(2.0)
    assert np.array_equal(np.array(loaded.tokenizer(wav)), np.array(models.tokenizer(wav)))
    for (name, a), (_, b) in zip(tree_flatten(loaded.parameters()), tree_flatten(models.parameters())):
        assert np.array_equal(np.array(a), np.array(b)), name
    # the loaded Linears take the CPU's few-row product kernel (cpu_kernels.gemv): same sums, other order
    np.testing.assert_allclose(np.array(loaded.ve.embed_wav(wav)), np.array(models.ve.embed_wav(wav)),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(model_io.ModelDirError, match="no cloning models"):
        load_cloning(model_dir, None)
    bigger = config_section(CloningConfig(voice_encoder=dict(hidden_size=32), s3_tokenizer=TINY.s3_tokenizer.to_dict(),
                                          campplus=TINY.campplus.to_dict()), quant.Recipe.parse("fp32"))
    with pytest.raises(model_io.ModelDirError, match="wrong shapes"):
        load_cloning(model_dir, bigger)


def test_prepared_voice_round_trips_exactly(models, tmp_path):
    from nightingale_mlx.voice import Voice
    from tests.test_voice import assert_same

    voice = prepare_voice(models, speechlike(2.3), 16000)
    assert_same(voice, Voice.load(voice.save(tmp_path / "v.safetensors")))
