"""Core ML export (ios_export): T3 package numerics through the MIL interpreter, codes, structure.

Needs coremltools (the [coreml] extra); skipped cleanly without it. The tiny q4 model is built
from the synthetic random checkpoint, so no fixture file is needed: the reference here is our
own MLX runtime, which the T3 parity tests tie to the PyTorch reference.
"""

import json
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools", reason="Core ML export needs coremltools: pip install '.[coreml]'")

from ios_export.export import ExportError, export_ios  # noqa: E402
from ios_export.mil_interpreter import Interpreter, InterpreterError  # noqa: E402
from ios_export.t3_package import T3ExportError, build_t3_package, unpack_codes  # noqa: E402
from ios_export.verify import MAX_REL_ERR, verify  # noqa: E402

CONTEXT, TEXT_SLOT = 64, 16


def _tiny_q4(directory: Path) -> Path:
    from convert.convert import convert
    from nightingale_mlx.synthetic import T3_OVERRIDES, write_checkpoint
    from nightingale_mlx.voice import Voice

    ckpt = write_checkpoint(directory / "ckpt")
    out = directory / "model"
    convert(ckpt, out, variant="en", quantize="q4", components=["t3", "text"], t3_overrides=T3_OVERRIDES)
    rng = np.random.default_rng(1)
    Voice(speaker_emb=rng.standard_normal((1, 256)), prompt_tokens=rng.integers(0, 6561, (1, 30)),
          gen_prompt_token=rng.integers(0, 6561, (1, 30)), gen_prompt_feat=rng.standard_normal((1, 60, 80)),
          gen_embedding=rng.standard_normal((1, 192))).save(out / "voices" / "default.safetensors")
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("ios")
    (root / "ckpt").mkdir()
    model = _tiny_q4(root)
    bundle = export_ios(model, root / "tiny.nightingale", context=CONTEXT, text_slots=[TEXT_SLOT])
    return model, bundle


def test_unpack_codes_matches_mlx_dequantize():
    import mlx.core as mx

    w = mx.random.normal((8, 128), key=mx.random.key(0)).astype(mx.float16)
    for bits in (4, 8):
        packed, scales, biases = mx.quantize(w, group_size=64, bits=bits)
        codes = unpack_codes(np.array(packed), bits).astype(np.float32)
        dense = codes.reshape(8, 2, 64) * np.array(scales, np.float32)[..., None] + np.array(biases, np.float32)[..., None]
        expected = np.array(mx.dequantize(packed, scales, biases, group_size=64, bits=bits), np.float32)
        np.testing.assert_allclose(dense.reshape(8, 128), expected, atol=2e-3)  # fp16 rounding of MLX's output


def test_verify_t3_bundle(exported):
    """Logits over prefill + 10 decode steps with states within 1e-2, codes bit-exact, structure clean."""
    model, bundle = exported
    report = verify(bundle, model)
    t3 = report["t3"]
    assert t3["numerics"]["steps"] == 10
    assert t3["numerics"]["prefill_rel_err"] <= MAX_REL_ERR
    assert t3["numerics"]["max_decode_rel_err"] <= MAX_REL_ERR
    assert t3["codes"]["codes_equal"] and t3["codes"]["blockwise_ops"] > 0
    assert t3["codes"]["max_dequant_diff_fp16_ulps"] <= 2.0  # MLX's own fp16 dequantize rounds twice
    s = t3["structure"]
    assert not (s["unexpected_ops"] or s["random_ops"] or s["dynamic_shapes"] or s["linears_not_blockwise"])
    assert s["states_ok"] and report["hashes_ok"] and report["ok"]
    assert t3["weight_fraction_of_fp32"] <= 0.32


def test_bundle_manifest_and_voices(exported):
    _, bundle = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "nightingale-ios" and manifest["sample_rate"] == 24000
    t3 = manifest["t3"]
    assert t3["quantization"]["bits"] == 4 and t3["compute_units"] == "cpuAndGPU"
    assert set(t3["functions"]) == {"decode", f"prefill_{TEXT_SLOT}"}
    assert t3["tokens"]["start_speech"] == 6561 and t3["tokens"]["stop_speech"] == 6562
    assert manifest["voices"] == ["default"] and (bundle / "voices" / "default.safetensors").is_file()
    assert set(manifest["files"]) >= {"t3_conditioning.safetensors", "tokenizer.json", "voices/default.safetensors"}
    spec = ct.models.MLModel(str(bundle / "t3.mlpackage"), skip_model_load=True).get_spec()
    assert spec.specificationVersion >= 9  # iOS18 (states, blockwise ops)
    decode = next(f for f in spec.description.functions if f.name == "decode")  # multifunction: per function
    assert len(decode.state) == 2 * 4 and spec.description.defaultFunctionName == "decode"


def test_bad_input_errors(exported, tmp_path):
    model, bundle = exported
    with pytest.raises(ExportError, match="must end in .nightingale"):
        export_ios(model, tmp_path / "x.bundle")
    with pytest.raises(ExportError, match="--force"):
        export_ios(model, bundle)
    with pytest.raises(ExportError, match="target"):
        export_ios(model, tmp_path / "x.nightingale", target="npu")
    with pytest.raises(InterpreterError, match="not a saved .mlpackage"):
        Interpreter(tmp_path)
    interp = Interpreter(bundle / "t3.mlpackage")
    with pytest.raises(InterpreterError, match="no function"):
        interp.run("prefill_9")
    with pytest.raises(InterpreterError, match="missing input"):
        interp.run("decode", token=np.zeros(1, np.int32))


def test_context_must_fit(exported, tmp_path):
    from nightingale_mlx import model_io

    t3, _ = model_io.load_t3(exported[0])
    with pytest.raises(T3ExportError, match="context"):
        build_t3_package(t3, tmp_path / "t3.mlpackage", 40, [16], tmp_path)


@pytest.mark.slow
def test_full_size_q4_t3(tmp_path):
    """Full-size random en T3 at q4: numerics, codes, and weights <= 32% of fp32 (uses /tmp/full_en)."""
    from convert.convert import convert

    checkpoint = Path("/tmp/full_en")
    if not (checkpoint / "t3_cfg.safetensors").is_file():
        pytest.skip("make a full-size checkpoint first: tests/reference/make_checkpoint.py --size full --variant en")
    model = convert(checkpoint, tmp_path / "model", variant="en", quantize="q4", components=["t3"])
    bundle = export_ios(model, tmp_path / "full.nightingale", context=512, text_slots=[64])
    report = verify(bundle, model)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["t3"]["weight_fraction_of_fp32"] <= 0.32
