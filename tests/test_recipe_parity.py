"""The shipped recipes against the fp32 reference: q8 and q4 through whichever kernels run (CI runs
this file with the CPU fast paths and again with NIGHTINGALE_MLX_NATIVE=1, the Metal branches).

The reference outputs are the fp32 golden fixtures of the parity tests; our side converts the same
weights with the recipe. Errors are relative L2 (|ours - ref| / |ref|) unless named otherwise.
Tolerances come from the precision: group-64 affine weights have a relative error per product of
EPS_W (bench/quant_sensitivity.py, Gaussian weights: q8 0.54%, q4 9.1%); T3 runs ~18 quantized
products in series at tiny size and bf16 activations (2^-8) on top, so sqrt(18) * EPS_W (q8 2.3%,
q4 39%) is the scale of its error. Each tolerance is that scale times the factor stated beside it,
about 1.5x what these fixtures measure; a broken kernel or layout gives errors near 100%.
"""

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.cloning import convert_cloning
from convert.convert import convert
from nightingale_mlx import quant
from tests.reference import cloning_harness, flow_harness, hift_harness, t3_harness
from tests.reference.sizes import t3_overrides
from tests.reference.weights import random_state_dict

EPS_W = {"q8": 0.0054, "q4": 0.091}
T3_SCALE = np.sqrt(18)
# (stage, check) -> tolerance factor over the stated scale.
T3_LOGITS = {"q8": 3.0 * T3_SCALE * EPS_W["q8"], "q4": 1.1 * T3_SCALE * EPS_W["q4"]}
T3_PROBS_TV = {"q8": 0.2, "q4": 0.8}  # total variation of the processed distribution (random logits are flat)
FLOW_MEL = 3.0 * EPS_W["q8"]  # both recipes keep the flow at 8 bits; the CFM adds no depth per step
HIFT_WAV_SNR_DB = 30.0  # fp16 HiFT, injected F0: the fp32 parity target
CLONING_COSINE = 0.999  # fp16 cloning embeddings
CLONING_TOKENS_SAME = 0.95  # fp16 S3 tokens: FSQ rounding may flip a few near a boundary

RECIPES = ["q8", "q4"]
T3_FILES = {"en": "t3_cfg.safetensors", "mtl-v2": "t3_mtl23ls_v2.safetensors"}


def rel(ref, ours) -> float:
    ref, ours = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
    assert ref.shape == ours.shape and np.isfinite(ours).all()
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _fixture(fixtures_dir, name):
    fx = dict(np.load(fixtures_dir / name))
    return fx, random_state_dict(json.loads(str(fx["spec"])), int(fx["seed"]))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("variant", ["en", "mtl-v2"])
def test_t3_recipe_teacher_forced(variant, recipe, fixtures_dir, tmp_path):
    fx, state = _fixture(fixtures_dir, f"t3_tiny_{variant}.npz")
    save_file(state, str(tmp_path / T3_FILES[variant]))
    model_dir = convert(tmp_path, tmp_path / "model", variant=variant, quantize=recipe,
                        t3_overrides=t3_overrides("tiny"), components=["t3"])
    inputs = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith("teacher/in/")}
    ref = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith("teacher/ref/")}
    ours = t3_harness.run_ours(model_dir, inputs, alignment_analyzer=variant != "en")
    k, kp = len(ref["logits"]), len(ref["probs"])
    logits = rel(ref["logits"], ours["logits"][:k])
    tv = float(0.5 * np.abs(ref["probs"].astype(np.float64) - ours["probs"][:kp]).sum(-1).max())
    assert logits <= T3_LOGITS[recipe], f"{recipe} T3 logits rel err {logits:.4f} > {T3_LOGITS[recipe]:.4f}"
    assert tv <= T3_PROBS_TV[recipe], f"{recipe} T3 processed-probs TV {tv:.3f} > {T3_PROBS_TV[recipe]}"


@pytest.mark.parametrize("scenario", ["even", "odd"])
def test_flow_q8(scenario, fixtures_dir, tmp_path):
    fx, state = _fixture(fixtures_dir, "flow_tiny_mtl-v2.npz")
    model = flow_harness.convert_flow(flow_harness.write_s3gen(state, tmp_path, str(fx["s3gen_file"])))
    quant.apply(model, quant.PRESETS["q8"]["flow"], quant.DEFAULT_GROUP_SIZE)  # as the converter does
    inputs = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"in/{scenario}/")}
    ref = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"ref/{scenario}/")}
    ours = flow_harness.run_ours(model, inputs)
    err = rel(ref["mel"], ours["mel"])
    assert err <= FLOW_MEL, f"q8 flow mel rel err {err:.4f} > {FLOW_MEL:.4f}"


def test_hift_fp16(fixtures_dir, tmp_path):
    fx, state = _fixture(fixtures_dir, "hift_tiny_mtl-v2.npz")
    save_file(state, str(tmp_path / "s3gen.safetensors"))
    hift = hift_harness.load_hift(tmp_path / "s3gen.safetensors")
    quant.apply(hift, quant.PRESETS["q8"]["hift"], quant.DEFAULT_GROUP_SIZE)
    ours = hift_harness.run_ours(hift, hift_harness.make_inputs(int(fx["seed"])), ref=fx)
    # Voiced, injected F0: the waveform. Predicted F0: the F0 itself, then the network's output
    # (conv_post) on the reference's source (a 1e-4 F0 change moves the phase of every later sample).
    snr = -20 * np.log10(rel(fx["voiced/wav"], ours["voiced/wav"]))
    assert snr >= HIFT_WAV_SNR_DB, f"fp16 HiFT voiced waveform SNR {snr:.1f} dB"
    assert rel(fx["predicted/f0"], ours["predicted/f0"]) <= 1e-3
    snr = -20 * np.log10(rel(fx["predicted/conv_post"], ours["predicted/conv_post"]))
    assert snr >= HIFT_WAV_SNR_DB, f"fp16 HiFT conv_post SNR {snr:.1f} dB"


def test_cloning_fp16(fixtures_dir, tmp_path):
    fx = dict(np.load(fixtures_dir / "cloning_tiny_mtl-v2.npz"))
    spec, seed = json.loads(str(fx["spec"])), int(fx["seed"])
    save_file(random_state_dict(spec["ve"], seed), str(tmp_path / "ve.safetensors"))
    save_file(random_state_dict(spec["s3gen"], seed), str(tmp_path / "s3gen.safetensors"))
    models, _ = convert_cloning(tmp_path, "en", quant.Recipe.parse("q8"))
    assert models.ve.proj.weight.dtype == mx.float16
    for clip, name in enumerate(cloning_harness.CLIPS):
        ref = {k.split("/", 1)[1]: v for k, v in fx.items() if k.startswith(f"{clip}/")}
        ours = cloning_harness.run_ours(models, fixtures_dir / "audio" / name, ref)
        for key in ("speaker_emb", "gen_embedding"):
            c = cloning_harness.cosine(ref[key], ours[key])
            assert c >= CLONING_COSINE, f"{name} {key} cosine {c:.5f}"
        for key in ("prompt_tokens", "gen_prompt_token"):
            same = float(np.mean(ref[key] == ours[key])) if ref[key].shape == ours[key].shape else 0.0
            assert same >= CLONING_TOKENS_SAME, f"{name} {key}: {same:.3f} identical"
