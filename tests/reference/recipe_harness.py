"""The shipped recipes (q8, q4) against the fp32 reference, per stage: checks shared by the CI test
(tests/test_recipe_parity.py, tiny fixtures) and the live full-size run:

    NIGHTINGALE_MLX_NATIVE=1 python -m tests.reference.recipe_harness --size full --recipe q8 --seed 0

Errors are relative L2 (|ours - ref| / |ref|) unless named otherwise. Tolerances come from the
precision: group-64 affine weights have a relative error per product of EPS_W
(bench/quant_sensitivity.py, Gaussian weights: q8 0.54%, q4 9.1%); T3 runs PRODUCTS_IN_SERIES
quantized products one after another (4 per layer: v, o, gate/up, down; plus embedding and head) with
bf16 activations on top, so sqrt(products) * EPS_W is the scale of its logit error. Each tolerance
is that scale times a stated factor, about 1.5x what the tiny fixtures measure; a broken kernel or
layout gives errors near 100%.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from nightingale_mlx import quant

from . import cloning_harness, flow_harness, hift_harness, t3_harness
from .checks import snr_db

EPS_W = {"q8": 0.0054, "q4": 0.091}
LAYERS = {"tiny": 4, "full": 30}
LOGIT_FACTOR = {"q8": 3.0, "q4": 1.1}  # q4's error saturates (random logits are nearly flat)
PROBS_TV = {"q8": 0.2, "q4": 0.8}  # worst step's total variation of the processed distribution
FLOW_MEL = 3.0 * EPS_W["q8"]  # both recipes keep the flow at 8 bits; the CFM adds no depth per step
HIFT_SNR_DB = 30.0  # fp16 HiFT: the fp32 parity target
HIFT_F0 = 1e-3
CLONING_COSINE = 0.9999  # fp16 cloning embeddings (measured >= 0.9999994)
CLONING_TOKENS_SAME = 0.97  # fp16 S3 tokens: FSQ rounding may flip a few near a boundary (measured 99.4%)


def rel(ref, ours) -> float:
    ref, ours = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
    if ref.shape != ours.shape or not np.isfinite(ours).all():
        return float("inf")
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def check(name: str, value: float, tolerance: float, higher_is_better: bool = False) -> dict:
    """NaN fails either way (it compares false); rel() gives inf for a non-finite or misshapen output."""
    ok = value >= tolerance if higher_is_better else value <= tolerance
    return {"name": name, "value": value, "tolerance": tolerance, "ok": bool(ok)}


def t3_logit_tolerance(size: str, recipe: str) -> float:
    return LOGIT_FACTOR[recipe] * np.sqrt(4 * LAYERS[size] + 2) * EPS_W[recipe]


def t3_checks(ref: dict, ours: dict, size: str, recipe: str, prefix: str) -> list:
    """Teacher-forced scenario: raw logits (both CFG rows) and the processed distribution."""
    k, kp = len(ref["logits"]), len(ref["probs"])
    tv = 0.5 * np.abs(ref["probs"].astype(np.float64) - ours["probs"][:kp]).sum(-1).max()
    return [check(f"{prefix}.logits_rel", rel(ref["logits"], ours["logits"][:k]), t3_logit_tolerance(size, recipe)),
            check(f"{prefix}.processed_probs_tv", float(tv), PROBS_TV[recipe])]


def flow_checks(ref: dict, ours: dict, prefix: str) -> list:
    return [check(f"{prefix}.mel_rel", rel(ref["mel"], ours["mel"]), FLOW_MEL)]


def hift_checks(ref: dict, ours: dict, prefix: str) -> list:
    """Voiced (injected F0): the waveform. Predicted F0: the F0, then conv_post on the reference's
    source (a 1e-4 F0 change moves the phase of every later sample)."""
    return [check(f"{prefix}.voiced_wav_snr_db", snr_db(ref["voiced/wav"], ours["voiced/wav"]), HIFT_SNR_DB, True),
            check(f"{prefix}.predicted_f0_rel", rel(ref["predicted/f0"], ours["predicted/f0"]), HIFT_F0),
            check(f"{prefix}.predicted_conv_post_snr_db",
                  snr_db(ref["predicted/conv_post"], ours["predicted/conv_post"]), HIFT_SNR_DB, True)]


def cloning_checks(ref: dict, ours: dict, prefix: str) -> list:
    out = [check(f"{prefix}.{k}_cosine", cloning_harness.cosine(ref[k], ours[k]), CLONING_COSINE, True)
           for k in ("speaker_emb", "gen_embedding")]
    for k in ("prompt_tokens", "gen_prompt_token"):
        same = float(np.mean(ref[k] == ours[k])) if ref[k].shape == ours[k].shape else 0.0
        out.append(check(f"{prefix}.{k}_identical", same, CLONING_TOKENS_SAME, True))
    return out


def quantize_s3gen_part(module, component: str, recipe: str) -> None:
    """What the converter does to a flow or HiFT for `recipe`."""
    quant.apply(module, quant.PRESETS[recipe][component], quant.DEFAULT_GROUP_SIZE)


# ------------------------------------------------------------------ the live-reference driver


def live_checks(size: str, recipe: str, seed: int, work: Path) -> list:
    """T3 (mtl-v2, teacher-forced), flow and HiFT: the reference in fp32 vs ours under `recipe`."""
    from convert.convert import convert

    from .parity import run_ref
    from .sizes import t3_overrides

    variant, checks = "mtl-v2", []
    ckpt = work / "ckpt"
    run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt,
            "--only", "t3")
    model_dir = convert(ckpt, work / "model", variant=variant, quantize=recipe, t3_overrides=t3_overrides(size),
                        components=["t3"], force=True)
    mode, steps, params = t3_harness.SCENARIOS["mtl"][0]
    inputs = t3_harness.make_inputs(variant, mode, steps, params, seed)
    np.savez(work / "in.npz", **inputs)
    run_ref("ref_t3.py", "--ckpt", ckpt, "--variant", variant, "--size", size, "--inputs", work / "in.npz",
            "--out", work / "ref.npz")
    ours = t3_harness.run_ours(model_dir, inputs, alignment_analyzer=True)
    checks += t3_checks(dict(np.load(work / "ref.npz")), ours, size, recipe, f"{recipe}.t3.{size}.{mode}")

    s3 = work / "s3"
    run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", s3, "--only", "s3gen")
    s3_file = s3 / json.loads((s3 / "test_manifest.json").read_text())["files"]["s3gen"]["file"]
    inputs = flow_harness.make_inputs(size, seed)
    np.savez(work / "flow_in.npz", **inputs)
    run_ref("ref_flow.py", "--ckpt", s3, "--size", size, "--inputs", work / "flow_in.npz", "--out",
            work / "flow_ref.npz", "--n-timesteps", flow_harness.N_TIMESTEPS)
    ref = flow_harness.scenarios(dict(np.load(work / "flow_ref.npz")))
    flow = flow_harness.convert_flow(s3_file)
    quantize_s3gen_part(flow, "flow", recipe)
    for name, ins in flow_harness.scenarios(inputs).items():
        checks += flow_checks(ref[name], flow_harness.run_ours(flow, ins), f"{recipe}.flow.{size}.{name}")

    inputs = hift_harness.make_inputs(seed)
    np.savez(work / "hift_in.npz", **inputs)
    run_ref("ref_hift.py", "--ckpt", s3, "--size", size, "--inputs", work / "hift_in.npz", "--out",
            work / "hift_ref.npz")
    ref = dict(np.load(work / "hift_ref.npz"))
    hift = hift_harness.load_hift(s3_file)
    quantize_s3gen_part(hift, "hift", recipe)
    checks += hift_checks(ref, hift_harness.run_ours(hift, inputs, ref), f"{recipe}.hift.{size}")
    return checks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="a shipped recipe vs the fp32 reference, per stage")
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    p.add_argument("--recipe", choices=list(EPS_W), default="q8")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        checks = live_checks(args.size, args.recipe, args.seed, Path(work))
    for c in checks:
        print(json.dumps(c), flush=True)
    failed = [c["name"] for c in checks if not c["ok"]]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
