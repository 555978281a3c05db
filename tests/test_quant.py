"""Quantization recipes on the tiny synthetic checkpoint: what gets quantized, strict loading and
clear errors, and the quality report (`nightingale quality`). Full-size numbers: bench/quantization.py."""

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from convert.convert import convert
from nightingale_mlx import quality, quant
from nightingale_mlx.model_io import ModelDirError, load_config, load_s3gen, load_t3
from nightingale_mlx.synthetic import DEFAULT_VOICE, T3_OVERRIDES, VOICE_RATE, synthetic_voice_wav, write_checkpoint
from nightingale_mlx.voice import load_cloning, prepare_voice

QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """fp32, q8 and q4 conversions of one tiny random checkpoint, sharing one default voice."""
    root = tmp_path_factory.mktemp("quant")
    (root / "ckpt").mkdir()
    ckpt = write_checkpoint(root / "ckpt")
    dirs = {}
    for recipe in ("fp32", "q8", "q4"):
        dirs[recipe] = convert(ckpt, root / recipe, variant="en", quantize=recipe, t3_overrides=T3_OVERRIDES,
                               components=["t3", "s3gen", "cloning", "text"])
    voice = prepare_voice(load_cloning(dirs["fp32"], load_config(dirs["fp32"]).cloning), synthetic_voice_wav(),
                          VOICE_RATE)
    for d in dirs.values():
        voice.save(d / DEFAULT_VOICE)
    return dirs


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_presets_and_per_component_recipes():
    assert quant.Recipe.parse("q4").bits == dict(t3=4, flow=8, hift=32, cloning=16)
    r = quant.Recipe.parse("t3=4,flow=4,group=128")
    assert r.bits["flow"] == 4 and r.group_size == 128 and r.describe() == "t3=4,flow=4,hift=32,cloning=32,group=128"
    assert quant.Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(quant.RecipeError, match="hift=8"):  # HiFT is phase-sensitive: float only
        quant.Recipe.parse("hift=8")
    # T3's float dtype: bf16 for quantized T3 (bench/t3_activations.py), fp16 for fp16, overridable.
    assert quant.Recipe.parse("q8").t3_dtype == "bf16" and quant.Recipe.parse("fp16").t3_dtype == "fp16"
    r = quant.Recipe.parse("t3=8,flow=8,hift=16,cloning=16,t3_dtype=fp16")
    assert r.dtype("t3") == mx.float16 and r.describe().endswith("t3_dtype=fp16")
    assert quant.Recipe.from_dict(r.to_dict()) == r
    old = {"recipe": "q8", "bits": dict(t3=8, flow=8, hift=16, cloning=16), "group_size": 64}
    assert quant.Recipe.from_dict(old).t3_dtype == "fp16"  # dirs converted before t3_dtype hold fp16
    with pytest.raises(quant.RecipeError, match="t3_dtype"):
        quant.Recipe.parse("t3=8,t3_dtype=fp8")


def test_q4_quantizes_t3_and_flow_linears_and_keeps_hift_float(models):
    t3, _ = load_t3(models["q4"])
    s3 = load_s3gen(models["q4"])
    assert t3.tfmr.norm.weight.dtype == mx.bfloat16 and t3.speech_head.scales.dtype == mx.bfloat16
    t3_q = {p: m.bits for p, m in t3.named_modules() if isinstance(m, QUANTIZED)}
    assert t3_q["tfmr.layers.0.self_attn.q_proj"] == 4 and t3_q["speech_head"] == 4
    assert t3_q["speech_emb"] == 4 and t3_q["text_emb"] == 4 and t3_q["speech_pos_emb.emb"] == 4
    flow_q = {p: m.bits for p, m in s3.flow.named_modules() if isinstance(m, QUANTIZED)}
    assert set(flow_q.values()) == {8}
    assert any(p.startswith("encoder.encoders.") for p in flow_q)  # conformer
    assert any(p.startswith("decoder.estimator.") for p in flow_q)  # U-Net
    assert not any(isinstance(m, QUANTIZED) for _, m in s3.mel2wav.named_modules())
    assert {v.dtype for _, v in tree_flatten(s3.mel2wav.parameters())} == {mx.float32}  # phase-sensitive: fp32


def test_skipped_layers_are_listed_in_config(models):
    q = load_config(models["q4"]).quantization
    # T3's emotion projection is 1 wide: no group size divides it, so it stays float (T3's bf16), by name.
    assert q["skipped"]["t3"] == ["cond_enc.emotion_adv_fc"]
    assert q["skipped"]["flow"] == []
    assert "skipped" not in load_config(models["fp32"]).quantization
    t3, _ = load_t3(models["q4"])
    assert isinstance(t3.cond_enc.emotion_adv_fc, nn.Linear)
    assert t3.cond_enc.emotion_adv_fc.weight.dtype == mx.bfloat16


def test_flow_recipe_mismatch_and_corrupt_scales_are_clear_errors(models, tmp_path):
    out = _copy(models["q4"], tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    config["quantization"]["bits"]["flow"] = 4
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="wrong shapes"):
        load_s3gen(out)
    config["quantization"]["bits"]["flow"] = 8
    config["quantization"]["skipped"]["flow"] = ["decoder.estimator.time_mlp.linear_1"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(quant.QuantizedWeightsError, match="does not match the weights"):
        load_s3gen(out)

    out = _copy(models["q4"], tmp_path / "c")
    weights, meta = mx.load(str(out / "s3gen.safetensors"), return_metadata=True)
    name = next(k for k in sorted(weights) if k.startswith("flow.") and k.endswith(".scales"))
    weights[name] = mx.full(weights[name].shape, mx.nan, dtype=weights[name].dtype)
    mx.save_safetensors(str(out / "s3gen.safetensors"), weights, metadata=meta)
    with pytest.raises(quant.QuantizedWeightsError, match=f"{name} holds NaN"):
        load_s3gen(out)
    weights[name] = weights[name][:, :-1]  # a truncated scales tensor
    mx.save_safetensors(str(out / "s3gen.safetensors"), weights, metadata=meta)
    with pytest.raises(ModelDirError, match=f"wrong shapes \\(first: {name}"):
        load_s3gen(out)


def test_sizes_shrink_with_the_recipe(models):
    fp32, q8, q4 = (quality.dir_size_bytes(models[r]) for r in ("fp32", "q8", "q4"))
    assert q4 < q8 < 0.45 * fp32


@pytest.fixture(scope="module")
def reports(models):
    return {r: quality.compare(models[r], models["fp32"], steps=8, memory=False) for r in ("q8", "q4")}


def test_t3_metrics_of_a_model_against_itself_are_exact(models):
    from nightingale_mlx.tts import TTS

    tts = TTS(models["q4"])
    voice = tts.resolve_voice(None)
    ids = tts.tokenizer.text_tokens("Hello there.", "en")
    m = quality.t3_metrics(tts.t3, tts.t3, voice, ids, [5, 9, 5, 200], tts.sampling_params())
    assert m["logits_rel_err"] == 0 and m["kl_mean"] == 0 and m["top1_agreement"] == 1 and m["steps"] == 4


def test_quality_of_q8_and_q4(reports):
    q8, q4 = reports["q8"], reports["q4"]
    # Tiny random weights (64-wide groups over 256-wide layers) are harsher than full size; these
    # bounds only catch a broken recipe. The README table holds the full-size measurements.
    assert 0 < q8["t3"]["logits_rel_err"] < 0.05 < q4["t3"]["logits_rel_err"] < 0.6
    assert q8["t3"]["kl_mean"] < q4["t3"]["kl_mean"] < 0.5
    assert q8["s3gen"]["mel_snr_db"] > 30 and q4["s3gen"]["mel_snr_db"] > 30  # both flows at 8 bits
    assert q4["size_ratio"] < q8["size_ratio"] < 0.45
    assert 0 <= q4["e2e"]["tokens_before_divergence"] <= q4["e2e"]["sampled_tokens"] <= 8
    assert "random weights" in quality.report(q4)


def test_snr_and_shape_mismatch():
    x = np.ones(100)
    assert quality.snr_db(x, x * 1.01) == pytest.approx(40.0)
    with pytest.raises(quality.QualityError, match="shapes differ"):
        quality.snr_db(x, x[:-1])


def test_cli_quality_json_and_memory_worker(models, capsys, monkeypatch):
    from nightingale_mlx.cli import main

    monkeypatch.setenv("NIGHTINGALE_BLAS_CHECKED", "1")  # no re-exec with OpenBLAS inside pytest
    main(["quality", "-m", str(models["q8"]), "--ref", str(models["fp32"]), "--steps", "4", "--no-memory", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"]["recipe"] == "q8" and 0 < result["t3"]["logits_rel_err"] < 0.05
    mem = quality.peak_memory(models["q4"], steps=4)
    assert 0 < mem["baseline_mb"] <= mem["loaded_mb"] <= mem["generate_mb"]
    assert mem["measure"].startswith("process peak RSS")


def test_peak_rss_is_the_workers_own_not_its_parents():
    """A fresh worker must not inherit its parent's peak (ru_maxrss does, across fork + exec)."""
    import subprocess
    import sys

    import numpy as np

    from nightingale_mlx.quality import peak_rss_mb

    hog = np.ones(400 * 2**20 // 8)  # this process: >= 400 MB resident
    assert peak_rss_mb() >= 400
    child = subprocess.run([sys.executable, "-c", "from nightingale_mlx.quality import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True)
    assert float(child.stdout) < 300, child.stdout  # a bare interpreter with numpy: ~60 MB
    del hog
