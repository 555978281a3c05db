"""Our side of the voice-conversion parity checks (project env, no torch): inputs, our run, the comparison.

Against `ChatterboxVC.generate` of chatterbox-tts 0.1.7 (ref_vc.py) on one random checkpoint:
English files (10 CFM steps with CFG, as vc.py) and Turbo/Nano files (the reference's
`S3Gen(meanflow=True)`, 2 steps, on the same tokens and noise). Ours runs the product path,
`TTS.convert_voice(source, target_clip)`, with the shared noise (and, in the `f0` run, a voiced F0
track) injected into S3Gen.inference. Checks: the 16 kHz source (soxr), its S3 tokens (identical),
the target's S3Gen prompt (cloning tolerances), the mel (flow tolerance), the waveform SNR (S3Gen's
whole output, and convert_voice's output as its prefix cut to the source's length), and the flow's
step count. Shared by `parity.py --component vc` and tests/test_vc_parity.py.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from nightingale_mlx.tts import TTS

from . import cloning_harness, e2e_harness, flow_harness, hift_harness, text_harness, turbo_harness
from .checks import error_check as _err
from .weights import digest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SOURCE = FIXTURES / "audio" / "speech_odd.flac"  # 2.36 s: 59 tokens
TARGET = FIXTURES / "audio" / "speech_long.flac"  # 7.2 s: 180 prompt tokens
MAX_TOKENS, MAX_PROMPT_TOKENS = 100, 250  # the shared noise buffers' sizes (both sides slice them)
VARIANTS = ("en", "turbo")
RUNS = ("run", "f0")
TOLERANCES = {size: {"mel": flow_harness.TOLERANCES[size]["mel"], "snr_db": hift_harness.TOLERANCES[size]["snr_db"]}
              for size in ("tiny", "full")}


def make_inputs(variant: str, seed: int) -> dict:
    rng = np.random.default_rng([seed, 22, list(VARIANTS).index(variant) if variant in VARIANTS else 2])
    frames = 2 * (MAX_PROMPT_TOKENS + MAX_TOKENS)
    return {
        "cfm_noise": rng.standard_normal((1, frames, 80), dtype=np.float32),
        "phases": rng.uniform(-np.pi, np.pi, (1, hift_harness.N_SINES)).astype(np.float32),
        "sine_noise": rng.standard_normal((1, 2 * MAX_TOKENS * 480, hift_harness.N_SINES), dtype=np.float32),
        "f0": hift_harness.f0_track(2 * MAX_TOKENS, rng),
    }


def inputs_digest(inputs: dict) -> str:
    return digest(inputs)


def run_ours(model_dir: Path, inputs: dict, inject_f0: bool, source: Path = SOURCE, target: Path = TARGET) -> dict:
    """TTS.convert_voice on the converted dir, the shared noise sliced to this run's sizes."""
    from nightingale_mlx import vc

    tts = TTS(model_dir)
    rec, inference = {}, tts.s3gen.inference

    def s3gen_spy(tokens, prompt, **kw):
        valid = tts.s3gen.valid_tokens(tokens)
        frames = 2 * (prompt.gen_prompt_token.shape[1] + valid.shape[0])
        mel_frames = frames - prompt.gen_prompt_feat.shape[1]
        noise = {"noise": mx.array(inputs["cfm_noise"][:, :frames]), "phases": mx.array(inputs["phases"]),
                 "sine_noise": mx.array(inputs["sine_noise"][:, : mel_frames * 480])}
        if inject_f0:
            noise["f0"] = mx.array(inputs["f0"][:, :mel_frames])
        rec["tokens"] = np.array(valid).astype(np.int64)
        rec["mel"] = np.array(tts.s3gen.mel(valid, prompt, noise=noise["noise"]))
        rec.update({f"prompt/{k}": np.array(getattr(prompt, f"gen_{k}")) for k in ("prompt_token", "prompt_feat",
                                                                                 "embedding")})
        wav = inference(tokens, prompt, **{**kw, **noise})
        rec["wav_s3gen"] = np.array(wav)
        return wav

    tts.s3gen.inference = s3gen_spy  # an instance attribute: the product method stays as it is
    rec["source16"] = vc.load_source(source)
    audio = tts.convert_voice(source, target, watermark=False)  # the reference's is an identity here
    rec["wav"] = audio.samples
    rec["n_timesteps"] = tts.s3gen.flow.cfg.n_timesteps
    return rec


def compare(ref: dict, ours: dict, size: str, prefix: str, n_steps: int, wav_is_figure: bool = False) -> list:
    """`wav_is_figure`: downstream of a predicted F0 the waveform SNR is a figure (the phase
    integrates the F0's own fp32 rounding, as in hift_harness); the injected-F0 run decides."""
    tol, t = TOLERANCES[size], cloning_harness.TOLERANCES
    checks = []
    if "source16" in ref:
        checks.append(_err(f"{prefix}.source_16k", ref["source16"], ours["source16"], t["soxr"]))
    checks.append(e2e_harness._same(f"{prefix}.s3_tokens", ref["tokens"], ours["tokens"]))
    checks.append(cloning_harness._tokens(f"{prefix}.target_prompt_token", ref["prompt/prompt_token"],
                                          ours["prompt/prompt_token"], t["token_flip_fraction"]))
    checks.append(_err(f"{prefix}.target_prompt_feat", ref["prompt/prompt_feat"], ours["prompt/prompt_feat"],
                       t["prompt_feat"]))
    checks.append(cloning_harness._cos(f"{prefix}.target_embedding", ref["prompt/embedding"],
                                       ours["prompt/embedding"]))
    checks.append(flow_harness._err(f"{prefix}.mel", ref["mel"], ours["mel"], tol["mel"],
                                    frames=int(ref["mel"].shape[1])))
    wav_ref = np.asarray(ref["wav"], np.float32).reshape(-1)
    checks.append(e2e_harness._snr_check(f"{prefix}.wav_s3gen", wav_ref, ours["wav_s3gen"], tol["snr_db"],
                                         samples=int(wav_ref.size)))
    n = len(ours["wav"])
    check = e2e_harness._snr_check(f"{prefix}.wav_convert_voice_prefix", wav_ref[:n], ours["wav"], tol["snr_db"],
                                   samples=n, cut_samples=int(wav_ref.size - n))
    check["ok"] = check["ok"] and 0 <= wav_ref.size - n < 960  # the cut is under one token
    checks.append(check)
    if wav_is_figure:
        for c in checks[-2:]:
            c["passes_fp32_bound"] = c["ok"]
            c["tolerance"] = "figure only (predicted F0); the injected-F0 run decides"
            c["ok"] = c["max_abs_err"] is not None and bool(np.isfinite(c["snr_db"])) and 0 <= wav_ref.size - n < 960
    checks.append({"name": f"{prefix}.flow_steps", "max_abs_err": float(abs(ours["n_timesteps"] - n_steps)),
                   "max_rel_err": None, "tolerance": 0, "ok": ours["n_timesteps"] == n_steps})
    return checks


def run_and_compare(model_dir: Path, inputs: dict, ref: dict, size: str, variant: str) -> list:
    checks = []
    for name in RUNS:
        ours = run_ours(model_dir, inputs, inject_f0=name == "f0")
        r = {k[len(name) + 1:]: v for k, v in ref.items() if k.startswith(f"{name}/")}
        checks += compare(r, ours, size, f"vc.{size}.{variant}.{name}", int(ref["n_cfm_timesteps"]),
                          wav_is_figure=name != "f0")
    return checks


# ------------------------------------------------------------------ building our side

FILES = {"en": {"t3": "t3_cfg.safetensors", "s3gen": "s3gen.safetensors", "ve": "ve.safetensors"}}


def write_checkpoint(ckpt: Path, variant: str, specs: dict, seed: int) -> dict:
    """The original files rebuilt from the weight specs and seed, plus the tokenizer files."""
    if variant in turbo_harness.T3_FILES:
        return turbo_harness.write_checkpoint(ckpt, variant, specs, seed)
    from safetensors.numpy import save_file

    from .weights import random_state_dict

    ckpt.mkdir(parents=True, exist_ok=True)
    digests = {}
    for part, name in FILES[variant].items():
        state = random_state_dict(specs[part], seed)
        digests[part] = digest(state)
        save_file(state, str(ckpt / name))
    text_harness.fixture_checkpoint(variant, ckpt)
    return digests


def convert_model(ckpt: Path, model_dir: Path, variant: str, size: str) -> Path:
    from convert.convert import convert

    from .sizes import t3_overrides

    overrides = {} if variant in turbo_harness.T3_FILES else dict(t3_overrides=t3_overrides(size))
    return convert(ckpt, model_dir, variant=variant, components=["t3", "s3gen", "cloning", "text"], force=True,
                   **overrides)


# ------------------------------------------------------------------ the live-reference driver


def vc_checks(size: str, variant: str, seed: int, work: Path, write_fixtures: bool) -> list:
    """parity.py component: checkpoint (ref env) -> ref_vc.py -> our conversion and convert_voice -> checks."""
    from . import parity

    if variant not in ("en", "turbo", "nano"):
        return []  # the decoders are the English S3Gen's and Turbo/Nano's meanflow S3Gen
    ckpt, model_dir = work / "ckpt", work / "model"
    parity.run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt)
    inputs = make_inputs(variant, seed)
    np.savez(work / "in.npz", **inputs)
    parity.run_ref("ref_vc.py", "--ckpt", ckpt, "--inputs", work / "in.npz", "--out", work / "ref.npz",
                   "--source", SOURCE, "--target", TARGET)
    ref = dict(np.load(work / "ref.npz"))
    convert_model(ckpt, model_dir, variant, size)
    checks = run_and_compare(model_dir, inputs, ref, size, variant)
    for c in checks:
        if c["name"].endswith(".wav_s3gen") and ".run." in c["name"]:
            c["seconds_reference"] = float(ref["run/seconds"])
    if write_fixtures:
        manifest = json.loads((ckpt / "test_manifest.json").read_text())["files"]
        computed = set(manifest["s3gen"].get("computed", []))
        specs = {"t3": manifest["t3"]["spec"], "ve": manifest["ve"]["spec"],
                 "s3gen": [s for s in manifest["s3gen"]["spec"] if s[0] not in computed]}
        from .weights import random_state_dict

        # The source's 16 kHz signal is compared in the live run only (size).
        fx = {f"ref/{k}": v for k, v in ref.items() if not k.endswith(("seconds", "source16"))}
        fx.update({f"spec/{k}": np.array(json.dumps(v)) for k, v in specs.items()})
        fx.update({f"digest/{k}": np.array(digest(random_state_dict(v, seed))) for k, v in specs.items()})
        fx.update({"seed": np.array(seed), "variant": np.array(variant),
                   "inputs_digest": np.array(inputs_digest(inputs))})
        np.savez_compressed(parity.FIXTURES / f"vc_{size}_{variant}.npz", **fx)
    return checks
