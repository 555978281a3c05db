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

The processed distribution's tolerance follows from the logit tolerance: at each step, TV_FACTOR
times the mean total variation that a logit error of exactly that size (Gaussian, on both CFG rows)
makes in the reference's own distribution, through the same CFG, penalty, temperature, min-p and
top-p (`t3_tv_tolerance`). It grows with depth and with the logits' scale, as the real error does.
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
TV_DRAWS = 64  # Monte Carlo draws for the distribution tolerance (two seeds differ by up to ~6% per step)
# The real logit error is not iid: per step it moves the distribution 0.4-2.2x as far as Gaussian
# noise of the same relative size (tiny, 24 steps, q8/q4, both kernel sets). At q4 the bound
# exceeds 1 (any distribution passes): there the logit check is the one that can fail.
TV_FACTOR = 3.0
FLOW_MEL = 3.0 * EPS_W["q8"]  # both recipes keep the flow at 8 bits; the CFM adds no depth per step
HIFT_SNR_DB = 30.0  # the fp32 parity target (q8/q4 keep HiFT fp32; the fp16 recipe must meet it too)
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


def t3_tv_tolerance(ref_logits: np.ndarray, inputs: dict, logit_rel: float, seed: int = 0) -> np.ndarray:
    """Per step, the mean total variation that a relative logit error of `logit_rel` (Gaussian noise
    of RMS logit_rel * RMS(ref logits), on both CFG rows) makes in the processed distribution, as
    T3 samples it after the teacher-forced tokens (quality.sampling_logits)."""
    import mlx.core as mx

    from nightingale_mlx.config import START_SPEECH_TOKEN
    from nightingale_mlx.quality import sampling_logits
    from nightingale_mlx.sampling import SamplingParams

    params = SamplingParams(**json.loads(str(inputs["params"])))
    logits = np.asarray(ref_logits, np.float64)  # (steps, 2, V)
    tokens = [int(t) for t in inputs["forced"][: len(logits)]]

    def probs(x):
        _, cut = sampling_logits(mx.array(x.transpose(1, 0, 2), mx.float32), tokens, START_SPEECH_TOKEN, params)
        return np.array(mx.softmax(cut, axis=-1), np.float64)

    sigma = logit_rel * np.sqrt(np.mean(logits ** 2))
    rng = np.random.default_rng(seed)
    base = probs(logits)
    tvs = [0.5 * np.abs(probs(logits + sigma * rng.standard_normal(logits.shape)) - base).sum(-1)
           for _ in range(TV_DRAWS)]
    return np.mean(tvs, axis=0)


def t3_checks(ref: dict, ours: dict, inputs: dict, size: str, recipe: str, prefix: str) -> list:
    """Teacher-forced scenario: raw logits (both CFG rows), and the processed distribution at each
    step against the total variation the logit tolerance explains there (`t3_tv_tolerance`)."""
    k, kp = len(ref["logits"]), len(ref["probs"])
    logit_tol = t3_logit_tolerance(size, recipe)
    tv = 0.5 * np.abs(ref["probs"].astype(np.float64) - ours["probs"][:kp]).sum(-1)
    tv_tol = TV_FACTOR * t3_tv_tolerance(ref["logits"][:kp], inputs, logit_tol)
    worst = int(np.argmax(tv / tv_tol))
    tv_check = check(f"{prefix}.processed_probs_tv", float(tv[worst]), float(tv_tol[worst]))
    tv_check.update(step=worst, worst_tv=float(tv.max()), tolerance_range=[float(tv_tol.min()), float(tv_tol.max())])
    return [check(f"{prefix}.logits_rel", rel(ref["logits"], ours["logits"][:k]), logit_tol), tv_check]


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


STAGES = ("t3", "flow", "hift", "cloning")


def live_checks(size: str, recipe: str, seed: int, work: Path, stages=STAGES) -> list:
    """T3 (mtl-v2, teacher-forced), flow, HiFT and the cloning models: the reference in fp32 vs ours
    under `recipe`."""
    variant, checks = "mtl-v2", []
    if "t3" in stages:
        checks += _t3_live(size, recipe, seed, work, variant)
    if "flow" in stages or "hift" in stages:
        checks += _s3gen_live(size, recipe, seed, work, variant, stages)
    if "cloning" in stages:
        checks += _cloning_live(size, recipe, seed, work, variant)
    return checks


def _t3_live(size: str, recipe: str, seed: int, work: Path, variant: str) -> list:
    from convert.convert import convert

    from .parity import run_ref
    from .sizes import t3_overrides

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
    return t3_checks(dict(np.load(work / "ref.npz")), ours, inputs, size, recipe, f"{recipe}.t3.{size}.{mode}")


def _s3gen_live(size: str, recipe: str, seed: int, work: Path, variant: str, stages) -> list:
    from .parity import run_ref

    checks, s3 = [], work / "s3"
    run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", s3, "--only", "s3gen")
    s3_file = s3 / json.loads((s3 / "test_manifest.json").read_text())["files"]["s3gen"]["file"]
    if "flow" in stages:
        checks += _flow_live(size, recipe, seed, work, s3_file)
    if "hift" in stages:
        checks += _hift_live(size, recipe, seed, work, s3_file)
    return checks


def _flow_live(size: str, recipe: str, seed: int, work: Path, s3_file: Path) -> list:
    from .parity import run_ref

    checks = []
    inputs = flow_harness.make_inputs(size, seed)
    np.savez(work / "flow_in.npz", **inputs)
    run_ref("ref_flow.py", "--ckpt", s3_file.parent, "--size", size, "--inputs", work / "flow_in.npz", "--out",
            work / "flow_ref.npz", "--n-timesteps", flow_harness.N_TIMESTEPS)
    ref = flow_harness.scenarios(dict(np.load(work / "flow_ref.npz")))
    flow = flow_harness.convert_flow(s3_file)
    quantize_s3gen_part(flow, "flow", recipe)
    for name, ins in flow_harness.scenarios(inputs).items():
        checks += flow_checks(ref[name], flow_harness.run_ours(flow, ins), f"{recipe}.flow.{size}.{name}")
    return checks


def _hift_live(size: str, recipe: str, seed: int, work: Path, s3_file: Path) -> list:
    from .parity import run_ref

    inputs = hift_harness.make_inputs(seed)
    np.savez(work / "hift_in.npz", **inputs)
    run_ref("ref_hift.py", "--ckpt", s3_file.parent, "--size", size, "--inputs", work / "hift_in.npz", "--out",
            work / "hift_ref.npz")
    ref = dict(np.load(work / "hift_ref.npz"))
    hift = hift_harness.load_hift(s3_file)
    quantize_s3gen_part(hift, "hift", recipe)
    return hift_checks(ref, hift_harness.run_ours(hift, inputs, ref), f"{recipe}.hift.{size}")


def _cloning_live(size: str, recipe: str, seed: int, work: Path, variant: str) -> list:
    from convert.cloning import convert_cloning

    from .parity import run_ref

    ckpt = work / "cloning"
    run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt,
            "--only", "ve,s3gen")
    models, _ = convert_cloning(ckpt, variant, quant.Recipe.parse(recipe))
    clips = [cloning_harness.FIXTURES / "audio" / c for c in cloning_harness.CLIPS]
    run_ref("ref_cloning.py", "--ckpt", ckpt, "--variant", variant, "--size", size, "--out", work / "cloning.npz",
            "--clips", *clips)
    ref_all, checks = dict(np.load(work / "cloning.npz")), []
    for i, clip in enumerate(clips):
        ref = {k.split("/", 1)[1]: v for k, v in ref_all.items() if k.startswith(f"{i}/")}
        checks += cloning_checks(ref, cloning_harness.run_ours(models, clip, ref), f"{recipe}.cloning.{size}.{clip.name}")
    return checks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="a shipped recipe vs the fp32 reference, per stage")
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    p.add_argument("--recipe", choices=list(EPS_W), default="q8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    args = p.parse_args(argv)
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        p.error(f"--stages: choose from {','.join(STAGES)}")
    with tempfile.TemporaryDirectory() as work:
        checks = live_checks(args.size, args.recipe, args.seed, Path(work), stages)
    for c in checks:
        print(json.dumps(c), flush=True)
    failed = [c["name"] for c in checks if not c["ok"]]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
