"""Conversion: variant detection, strict mapping, atomic output, and strict runtime loading."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from convert.convert import convert as convert_all, detect_variant
from convert.sanitize import ConversionError
from nightingale_mlx.model_io import ModelDirError, load_t3
from tests.helpers import write_original_t3

TINY = {"alignment_heads": [[3, 1], [2, 0], [1, 1]]}


def convert(*args, **kwargs):
    """These checkpoints hold only T3."""
    return convert_all(*args, components=["t3"], **kwargs)


def test_converts_and_loads_with_variant_and_profile(tmp_path):
    ckpt = write_original_t3(tmp_path / "ckpt")
    out = convert(ckpt, tmp_path / "model", t3_overrides=TINY, profile="compat-0.1.7")
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "mtl-v2" and config["profile"] == "compat-0.1.7"
    model, cfg = load_t3(out)
    assert cfg.t3.hidden_size == 128 and cfg.t3.num_hidden_layers == 4 and cfg.t3.is_multilingual
    assert not [p for p in (tmp_path).iterdir() if ".tmp-" in p.name]


def test_auto_prefers_v3_then_v2_then_en(tmp_path):
    write_original_t3(tmp_path, "en")
    assert detect_variant(tmp_path) == "en"
    write_original_t3(tmp_path, "mtl-v2")
    assert detect_variant(tmp_path) == "mtl-v2"
    write_original_t3(tmp_path, "mtl-v3")
    assert detect_variant(tmp_path) == "mtl-v3"
    assert detect_variant(tmp_path, "en") == "en"


def test_fp16_checkpoint_converts_like_its_fp32_upcast(tmp_path):
    """A fine-tune or re-upload stored in fp16 converts (exactly as the same values in fp32)."""
    from mlx.utils import tree_flatten
    from safetensors.numpy import load_file, save_file

    ckpt = write_original_t3(tmp_path / "fp16", "en", dtype=np.float16)
    upcast = {k: v.astype(np.float32) for k, v in load_file(str(ckpt / "t3_cfg.safetensors")).items()}
    (tmp_path / "fp32").mkdir()
    save_file(upcast, str(tmp_path / "fp32" / "t3_cfg.safetensors"))
    for recipe in ("fp32", "q8"):
        a, _ = load_t3(convert(ckpt, tmp_path / f"a-{recipe}", variant="en", quantize=recipe))
        b, _ = load_t3(convert(tmp_path / "fp32", tmp_path / f"b-{recipe}", variant="en", quantize=recipe))
        for (name, x), (_, y) in zip(tree_flatten(a.parameters()), tree_flatten(b.parameters())):
            assert x.dtype == y.dtype and mx.array_equal(x, y).item(), name


def test_not_a_checkpoint_dir(tmp_path):
    with pytest.raises(ConversionError, match="not a Chatterbox checkpoint dir"):
        convert(tmp_path, tmp_path / "out")
    with pytest.raises(ConversionError, match="no such checkpoint dir"):
        convert(tmp_path / "missing", tmp_path / "out")


def test_missing_tensor_is_named(tmp_path):
    ckpt = write_original_t3(tmp_path / "ckpt", drop=("tfmr.layers.2.mlp.up_proj.weight",))
    with pytest.raises(Exception, match="tfmr.layers.2.mlp.up_proj.weight"):
        convert(ckpt, tmp_path / "out", t3_overrides=TINY)
    assert not (tmp_path / "out").exists()


def test_unexpected_tensor_is_refused(tmp_path):
    extra = {"tfmr.layers.0.self_attn.rotary_emb.extra": np.zeros(3, np.float32)}
    ckpt = write_original_t3(tmp_path / "ckpt", extra=extra)
    with pytest.raises(Exception, match="unexpected"):
        convert(ckpt, tmp_path / "out", t3_overrides=TINY)


def test_wrong_shape_is_refused(tmp_path):
    extra = {"cond_enc.spkr_enc.bias": np.zeros(7, np.float32)}
    ckpt = write_original_t3(tmp_path / "ckpt", extra=extra)
    with pytest.raises(Exception, match="wrong shapes"):
        convert(ckpt, tmp_path / "out", t3_overrides=TINY)


def test_analyzer_heads_outside_backbone_are_refused(tmp_path):
    ckpt = write_original_t3(tmp_path / "ckpt")
    with pytest.raises(ConversionError, match="alignment head"):
        convert(ckpt, tmp_path / "out")  # the real (12, 15) head does not exist in a 4-layer model


def test_existing_output_needs_force_and_force_replaces(tmp_path):
    ckpt = write_original_t3(tmp_path / "ckpt")
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--force"):
        convert(ckpt, out, t3_overrides=TINY)
    assert (out / "mine.txt").read_text() == "keep"
    convert(ckpt, out, t3_overrides=TINY, force=True)
    assert (out / "config.json").exists() and not (out / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "model"]


def test_failed_conversion_keeps_the_old_output(tmp_path):
    ckpt = write_original_t3(tmp_path / "ckpt", drop=("speech_head.weight",))
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(Exception):
        convert(ckpt, out, t3_overrides=TINY, force=True)
    assert (out / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "model"]


def test_runtime_refuses_foreign_or_corrupt_weights(tmp_path):
    ckpt = write_original_t3(tmp_path / "ckpt")
    out = convert(ckpt, tmp_path / "model", t3_overrides=TINY)
    t3_file = out / "t3.safetensors"
    data = t3_file.read_bytes()
    t3_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="convert the model again"):
        load_t3(out)
    # An original (unconverted) file renamed into place is not our format.
    (ckpt / "t3_mtl23ls_v2.safetensors").rename(t3_file)
    with pytest.raises(ModelDirError, match="not a nightingale-mlx weights file"):
        load_t3(out)
    with pytest.raises(ModelDirError, match="no config.json"):
        load_t3(tmp_path)


def test_cli_reports_one_line_errors(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "nightingale_mlx", "convert", "--checkpoint", str(tmp_path / "nope"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert run.returncode == 1
    assert run.stderr.startswith("nightingale: error: ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("recipe,bits", [("q8", 8), ("q4", 4), ("t3=8,group=32", 8)])
def test_quantized_t3_loads_strictly_and_stays_close(tmp_path, recipe, bits):
    import mlx.core as mx

    ckpt = write_original_t3(tmp_path / "ckpt")
    ref_model, _ = load_t3(convert(ckpt, tmp_path / "fp32", t3_overrides=TINY))
    out = convert(ckpt, tmp_path / "q", quantize=recipe, t3_overrides=TINY)
    model, cfg = load_t3(out)
    assert cfg.quantization["bits"]["t3"] == bits
    assert model.tfmr.layers[0].self_attn.q_proj.bits == bits
    assert (out / "t3.safetensors").stat().st_size < 0.6 * (tmp_path / "fp32" / "t3.safetensors").stat().st_size
    spk = mx.ones((1, 256)) / 16
    logits = []
    for m in (ref_model, model):
        cond = m.condition(spk, mx.array([[1, 2, 3]]), 0.5)
        h, _ = m(m.prefill_embeddings(cond, mx.array([255, 5, 6, 0]), True), m.make_cache())
        logits.append(np.array(m.logits(h)))
    rel = np.linalg.norm(logits[1] - logits[0]) / np.linalg.norm(logits[0])
    assert rel < (0.05 if bits == 8 else 0.5)  # loose sanity bound; bench/ measures quality at full size


def test_recipe_mismatch_is_a_clear_error(tmp_path):
    ckpt = write_original_t3(tmp_path / "ckpt")
    out = convert(ckpt, tmp_path / "q", quantize="q4", t3_overrides=TINY)
    config = json.loads((out / "config.json").read_text())
    config["quantization"]["bits"]["t3"] = 8
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="wrong shapes"):
        load_t3(out)
    config["quantization"]["bits"]["t3"] = 5
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="bad quantization"):
        load_t3(out)


@pytest.mark.parametrize("bad", ["q3", "t3=5", "group=48", "voice=4", "t3=x"])
def test_bad_recipes_are_refused(tmp_path, bad):
    from nightingale_mlx.quant import RecipeError

    with pytest.raises(RecipeError):
        convert(write_original_t3(tmp_path / "ckpt"), tmp_path / "o", quantize=bad, t3_overrides=TINY)
