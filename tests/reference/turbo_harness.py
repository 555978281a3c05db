"""Our side of the Turbo/Nano parity checks (project env, no torch): inputs, our runs, the comparison.

Against `ChatterboxTurboTTS` of chatterbox-tts 0.1.7 (ref_turbo.py), on one random tiny checkpoint:
- T3 (`inference_turbo`): teacher-forced, greedy and sampled runs; every step's raw logits and
  processed distribution (temperature -> top-k 1000 -> top-p 0.95 -> repetition penalty 1.2)
  and the tokens, with the T3 tolerances and flip rules of t3_harness;
- end to end (`generate`): text ids (GPT-2 tokenizer, Turbo punc_norm, a tag), S3Gen's tokens
  with the 3 silence tokens, the meanflow mel (2 Euler steps, no CFG) and the waveform, with the
  e2e tolerances (mel 1e-4, SNR >= 30 dB); ours runs `TTS.generate` teacher-forced;
- S3Gen again on those tokens and noise with an injected voiced F0 (80-300 Hz, hift_harness's
  track) in place of the predicted one, so the harmonic source runs throughout: waveform SNR
  >= 30 dB over all samples and over the unclipped ones;
- the voice (`prepare_conditionals`): the -27 LUFS signal, prompt tokens (375 max), S3Gen's
  prompt, the embeddings, with the cloning tolerances.
Shared by `parity.py --component turbo` and tests/test_turbo_parity.py.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from nightingale_mlx.config import S3GEN_SILENCE_TOKEN, TURBO_SILENCE_TOKENS
from nightingale_mlx.model_io import load_t3
from nightingale_mlx.sampling import SamplingParams
from nightingale_mlx.tts import TTS
from nightingale_mlx.voice import Voice, load_cloning, load_reference, normalize_loudness, prepare_voice

from . import cloning_harness, e2e_harness, hift_harness, t3_harness
from .checks import error_check as _err
from .checks import snr_db
from .weights import digest, random_conds

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CLIP = FIXTURES / "audio" / "speech_long.flac"  # 7.2 s: Turbo wants over 5 s
T3_FILES = {"turbo": "t3_turbo_v1.safetensors", "nano": "t3_nano_v1.safetensors"}
TEXT = "hello there [laugh] it works... the cat - sat; here: “fine” — done"
TURBO_PARAMS = dict(temperature=0.8, top_k=1000, top_p=0.95, repetition_penalty=1.2)
SCENARIOS = [("teacher", 24), ("greedy", 40), ("sample", 40)]
N_TOKENS = 24  # e2e: speech codes before EOS
PROBS_STEPS = 4
TEXT_VOCAB = 50276
# The loudness-normalised signal: the same float32 samples times the same gain (pyloudnorm on both
# sides), so only the gain's last bits may differ.
VOICE_TOLERANCES = {"norm24": 1e-6}


def make_inputs(variant: str, seed: int) -> dict:
    """T3 text ids and per-mode forcing/uniforms; e2e text, forced codes and noise."""
    rng = np.random.default_rng([seed, 20, ["turbo", "nano"].index(variant)])
    gen = random_conds(seed)["gen"]
    out = {"text_tokens": rng.integers(0, TEXT_VOCAB, size=16).astype(np.int64)}
    for mode, steps in SCENARIOS:
        out[f"t3/{mode}/params"] = np.array(json.dumps({**TURBO_PARAMS, "max_new_tokens": steps}))
        out[f"t3/{mode}/forced"] = rng.integers(0, 6561, size=steps).astype(np.int64)
        out[f"t3/{mode}/uniforms"] = rng.random(steps)
    n = N_TOKENS + TURBO_SILENCE_TOKENS
    frames = 2 * (gen["prompt_token"].shape[1] + n)
    mel_frames = frames - gen["prompt_feat"].shape[1]
    out.update({
        "e2e/text": np.array(TEXT), "e2e/forced": rng.integers(0, 6561, size=N_TOKENS).astype(np.int64),
        "e2e/cfm_noise": rng.standard_normal((1, frames, 80), dtype=np.float32),
        "e2e/phases": rng.uniform(-np.pi, np.pi, (1, hift_harness.N_SINES)).astype(np.float32),
        "e2e/sine_noise": rng.standard_normal((1, mel_frames * e2e_harness.SAMPLES_PER_FRAME, hift_harness.N_SINES),
                                              dtype=np.float32),
    })
    out["e2e/f0"] = hift_harness.f0_track(mel_frames, rng)
    return out


def inputs_digest(inputs: dict) -> str:
    return digest({k: v for k, v in inputs.items() if v.dtype.kind in "fiu"})


def turbo_voice(conds: dict) -> Voice:
    """The built-in voice (conds.pt) as our Voice for Turbo/Nano models."""
    v = e2e_harness.voice_of(conds)
    return Voice(v.speaker_emb, v.prompt_tokens, v.gen_prompt_token, v.gen_prompt_feat, v.gen_embedding, family="turbo")


def sub(d: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ T3


def run_t3(model_dir: Path, inputs: dict, voice: Voice, mode: str, follow) -> dict:
    """Our T3 on the reference's path (follow = its tokens): raw logits, processed probs, tokens."""
    model, _ = load_t3(model_dir)
    spec = sub(inputs, f"t3/{mode}/")
    params = SamplingParams(**{**json.loads(str(spec["params"])), "cfg_weight": 0.0, "min_p": 0.0,
                               "order": "warpers_first"})
    cond = model.condition(voice.speaker_emb, voice.prompt_tokens, 0.0)
    text = mx.array(inputs["text_tokens"])
    probs, own, margins = [], [], []

    def sampler(processed):
        step = len(probs)
        probs.append(np.array(mx.softmax(processed, axis=-1)[0]))
        if mode == "teacher":
            return mx.array([int(spec["forced"][step])])
        tok, margin = t3_harness.own_choice(mode, probs[-1].astype(np.float64), spec["uniforms"][step],
                                            int(follow[step]) if step < len(follow) else None)
        own.append(tok)
        margins.append(margin)
        return mx.array([int(follow[step]) if step < len(follow) else tok])

    tokens = list(model.inference(cond, text, params, sampler=sampler))
    logits = t3_harness.teacher_forced_logits(model, cond, text, tokens, False)
    out = {"logits": logits, "probs": np.stack(probs), "tokens": np.array(tokens, dtype=np.int64),
           "cond_emb": np.array(cond)}
    if mode != "teacher":
        out.update(own=np.array(own, dtype=np.int64)[: len(follow)], margin=np.array(margins), mode=np.array(mode))
    return out


def boundary_swaps(ref: np.ndarray, ours: np.ndarray, tol: float):
    """Tokens kept by one side only (top-k / top-p cut): accepted when, at each such step, they
    pair up one for one (same count kept by each side) and each pair's kept probabilities agree
    within `tol`: two near-equal scores at the cut swapped places by float error (the fp32 logits
    differ by ~1e-6). Returns (number of flips, all explained, details)."""
    kept_ref, kept_ours = ref > 0, ours > 0
    details, ok = [], True
    for step in np.flatnonzero((kept_ref != kept_ours).any(axis=1)):
        a = np.sort(ref[step][kept_ref[step] & ~kept_ours[step]])  # the reference's extra tokens
        b = np.sort(ours[step][kept_ours[step] & ~kept_ref[step]])
        paired = a.shape == b.shape and bool(np.all(np.abs(a - b) <= tol))
        ok = ok and paired
        details.append({"step": int(step), "reference_only": a.tolist()[:5], "ours_only": b.tolist()[:5],
                        "cause": "swap at the cut" if paired else "unexplained"})
    return len(details), ok, details


def compare_t3(ref: dict, ours: dict, size: str, prefix: str) -> list:
    ref = {**ref, "cond_emb": ours["cond_emb"]}  # the conditioning is checked through the logits
    checks = t3_harness.compare(ref, ours, size, prefix, min_p=0.0)
    for c in checks:  # no min-p here: a support flip can only be a swap at the top-k / top-p cut
        if c["name"].endswith(".processed_probs") and c.get("support_flips"):
            k = len(ref["probs"])
            n, ok, details = boundary_swaps(ref["probs"].astype(np.float64), ours["probs"][:k].astype(np.float64),
                                            t3_harness.TOLERANCES[size]["probs"])
            c.update(cut_boundary_swaps=n, support_flips=details,
                     ok=c["max_abs_err"] is not None and c["max_abs_err"] <= c["tolerance"] and ok)
    return [c for c in checks if not c["name"].endswith(".cond_emb")]


# ------------------------------------------------------------------ end to end


def run_e2e(model_dir: Path, inputs: dict, voice: Voice) -> dict:
    """TTS.generate teacher-forced to the inputs' codes then EOS, with the shared noise injected."""
    tts = TTS(model_dir)
    forced = [int(t) for t in inputs["e2e/forced"]] + [6562]
    probs = []

    def sampler(logits):
        probs.append(np.array(mx.softmax(logits.astype(mx.float32), axis=-1)[0]) if len(probs) < PROBS_STEPS
                     else None)
        return mx.array([forced[len(probs) - 1]])

    rec, s3gen_inference = {}, tts.s3gen.inference
    noise = {"noise": mx.array(inputs["e2e/cfm_noise"]), "phases": mx.array(inputs["e2e/phases"]),
             "sine_noise": mx.array(inputs["e2e/sine_noise"])}

    def s3gen_spy(tokens, voice, **kw):
        valid = tts.s3gen.valid_tokens(tokens)
        silence = mx.full((kw.get("silence_tokens", 0),), S3GEN_SILENCE_TOKEN, mx.int32)
        full = mx.concatenate([valid, silence])
        rec["s3gen_tokens"] = np.array(full).astype(np.int64)
        rec["mel"] = np.array(tts.s3gen.mel(full, voice, noise=noise["noise"]))
        wav = s3gen_inference(tokens, voice, **{**kw, **noise})
        rec["wav_untrimmed"] = np.array(wav)
        return wav

    tts.s3gen.inference = s3gen_spy  # an instance attribute: the product method stays as it is
    text = str(inputs["e2e/text"])
    rec["text_tokens"] = np.array(tts.tokenizer.text_tokens(text, "en"), dtype=np.int64)
    audio = tts.generate(text, voice=voice, sampler=sampler, watermark=False)  # as patches.disable_watermark
    rec["probs"] = np.stack([p for p in probs if p is not None])
    rec["wav"] = audio.samples
    rec["steps"] = len(probs)
    rec["n_timesteps"] = tts.s3gen.flow.cfg.n_timesteps
    rec["voiced_wav"] = np.array(s3gen_inference(rec["s3gen_tokens"], voice, **noise, f0=mx.array(inputs["e2e/f0"])))
    return rec


def voiced_check(ref_wav: np.ndarray, wav: np.ndarray, name: str) -> dict:
    """The injected-F0 waveform, as hift_harness judges its `voiced` scenario without float64."""
    wav_ref = np.asarray(ref_wav, np.float32).reshape(-1)
    wav = np.asarray(wav, np.float32).reshape(-1)
    inside = np.abs(wav_ref) < hift_harness.CLIP_LEVEL
    snr, snr_in = snr_db(wav_ref, wav), (snr_db(wav_ref[inside], wav[inside]) if inside.any() else None)
    floor = hift_harness.TOLERANCES["full"]["snr_db"]
    return {"name": name, "max_abs_err": float(np.abs(wav_ref - wav).max()), "max_rel_err": None,
            "snr_db": snr, "snr_db_unclipped": snr_in, "clipped_fraction": float(1 - np.mean(inside)),
            "samples": int(wav.size), "tolerance": f"snr and unclipped snr >= {floor:g} dB",
            "ok": wav.shape == wav_ref.shape and min(snr, np.inf if snr_in is None else snr_in) >= floor}


def compare_e2e(ref: dict, ours: dict, size: str, prefix: str, voiced_ref: dict = None) -> list:
    # inference_turbo strips the final EOS from what it returns; the step that sampled it still ran.
    ref = {**ref, "tokens": np.append(ref["tokens"], 6562)}
    checks = e2e_harness.compare(ref, ours, size, prefix, min_p=0.0)
    if voiced_ref is not None:
        checks.append(voiced_check(voiced_ref["wav"], ours["voiced_wav"], f"{prefix}.wav_injected_f0"))
    steps = int(ref["n_cfm_timesteps"])
    checks.append({"name": f"{prefix}.flow_steps", "max_abs_err": float(abs(ours["n_timesteps"] - steps)),
                   "max_rel_err": None, "tolerance": 0, "ok": ours["n_timesteps"] == steps == 2})
    return checks


# ------------------------------------------------------------------ the voice


def run_voice(model_dir: Path, clip: Path) -> dict:
    from nightingale_mlx.model_io import load_config

    models = load_cloning(model_dir, load_config(model_dir).cloning)
    voice = prepare_voice(models, clip, family="turbo")
    out = {k: np.array(getattr(voice, k)) for k in
           ("speaker_emb", "prompt_tokens", "gen_prompt_token", "gen_prompt_feat", "gen_embedding")}
    out["raw24"] = load_reference(clip, min_seconds=5.0)
    out["norm24"] = normalize_loudness(out["raw24"], 24000)
    return out


def loudness_gain(raw24: np.ndarray, norm24: np.ndarray) -> float:
    i = int(np.argmax(np.abs(raw24)))
    return float(norm24[i]) / float(raw24[i])


def compact_voice(ref: dict) -> dict:
    """For the fixture: the normalisation's gain and the first second of the normalised signal
    instead of the two 24 kHz signals (1.4 MB); the live run compares them whole."""
    ref = dict(ref)
    raw, norm = ref.pop("raw24"), ref.pop("norm24")
    return {**ref, "gain": np.float64(loudness_gain(raw, norm)), "norm24_head": norm[:24000]}


def compare_voice(ref: dict, ours: dict, prefix: str) -> list:
    t = cloning_harness.TOLERANCES
    if "raw24" in ref:
        ref = {**compact_voice(ref), "raw24": ref["raw24"], "norm24": ref["norm24"]}
    gain, ref_gain = loudness_gain(ours["raw24"], ours["norm24"]), float(ref["gain"])
    checks = [_err(f"{prefix}.norm24_first_second", ref["norm24_head"], ours["norm24"][: len(ref["norm24_head"])],
                   VOICE_TOLERANCES["norm24"]),
              {"name": f"{prefix}.loudness_gain", "max_abs_err": abs(gain - ref_gain),
               "max_rel_err": abs(gain / ref_gain - 1), "tolerance": "rel 1e-6", "gain": gain,
               "ok": abs(gain / ref_gain - 1) <= 1e-6}]
    if "raw24" in ref:
        checks += [_err(f"{prefix}.raw24", ref["raw24"], ours["raw24"], t["soxr"]),
                   _err(f"{prefix}.norm24", ref["norm24"], ours["norm24"], VOICE_TOLERANCES["norm24"])]
    checks.append(cloning_harness._tokens(f"{prefix}.prompt_tokens", ref["prompt_tokens"], ours["prompt_tokens"],
                                          t["token_flip_fraction"]))
    checks.append(cloning_harness._tokens(f"{prefix}.gen_prompt_token", ref["gen_prompt_token"],
                                          ours["gen_prompt_token"], t["token_flip_fraction"]))
    checks.append(_err(f"{prefix}.gen_prompt_feat", ref["gen_prompt_feat"], ours["gen_prompt_feat"], t["prompt_feat"]))
    checks.append(cloning_harness._cos(f"{prefix}.gen_embedding", ref["gen_embedding"], ours["gen_embedding"]))
    checks.append(cloning_harness._cos(f"{prefix}.speaker_emb", ref["speaker_emb"], ours["speaker_emb"]))
    n = int(np.asarray(ref["prompt_tokens"]).shape[-1])
    checks.append({"name": f"{prefix}.prompt_length", "max_abs_err": None, "max_rel_err": None,
                   "tolerance": "<= 375 (15 s)", "ok": n <= 375 and n == ours["prompt_tokens"].shape[-1], "tokens": n})
    return checks


# ------------------------------------------------------------------ all of it


def run_and_compare(model_dir: Path, inputs: dict, ref: dict, seed: int, size: str, variant: str,
                    clip: Path = CLIP) -> list:
    voice = turbo_voice(random_conds(seed))
    checks = []
    for mode, _ in SCENARIOS:
        r = sub(ref, f"t3/{mode}/")
        ours = run_t3(model_dir, inputs, voice, mode, r["tokens"])
        checks += compare_t3(r, ours, size, f"turbo.{size}.{variant}.t3.{mode}")
    voiced = sub(ref, "e2e_voiced/") or None
    checks += compare_e2e(sub(ref, "e2e/"), run_e2e(model_dir, inputs, voice), size, f"turbo.{size}.{variant}.e2e",
                          voiced)
    if any(k.startswith("voice/") for k in ref):
        checks += compare_voice(sub(ref, "voice/"), run_voice(model_dir, clip), f"turbo.{size}.{variant}.voice")
    return checks


def tokenizer_sha256(ckpt: Path) -> str:
    """make_checkpoint.write_gpt2_tokenizer's digest of the GPT-2 tokenizer files."""
    import hashlib

    from nightingale_mlx.text.gpt2_files import write_gpt2_tokenizer

    names = write_gpt2_tokenizer(ckpt)
    return hashlib.sha256(b"".join((ckpt / n).read_bytes() for n in names)).hexdigest()


def write_checkpoint(ckpt: Path, variant: str, specs: dict, seed: int) -> dict:
    """The original files from the weight specs (s3gen's computed buffers left out: we recompute
    them) and the synthetic GPT-2 tokenizer files; returns the weights' digests."""
    from safetensors.numpy import save_file

    from .weights import random_state_dict

    ckpt.mkdir(parents=True, exist_ok=True)
    files = {"t3": T3_FILES[variant], "s3gen": "s3gen_meanflow.safetensors", "ve": "ve.safetensors"}
    digests = {}
    for part, name in files.items():
        state = random_state_dict(specs[part], seed)
        digests[part] = digest(state)
        save_file(state, str(ckpt / name))
    digests["tokenizer"] = tokenizer_sha256(ckpt)
    return digests


def convert_model(ckpt: Path, model_dir: Path, variant: str) -> Path:
    from convert.convert import convert

    return convert(ckpt, model_dir, variant=variant, components=["t3", "s3gen", "cloning", "text"], force=True)


def turbo_checks(size: str, variant: str, seed: int, work: Path, write_fixtures: bool) -> list:
    """parity.py component: reference checkpoint -> ref_turbo.py -> our conversion and runs -> checks."""
    from . import parity

    if variant not in T3_FILES:
        return []  # parity.py loops over its --variant list; Turbo has its own variants
    ckpt, model_dir = work / "ckpt", work / "model"
    parity.run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt)
    inputs = make_inputs(variant, seed)
    np.savez(work / "in.npz", **inputs)
    parity.run_ref("ref_turbo.py", "--ckpt", ckpt, "--inputs", work / "in.npz", "--out", work / "ref.npz",
                   "--clip", CLIP)
    ref = dict(np.load(work / "ref.npz"))
    convert_model(ckpt, model_dir, variant)
    checks = run_and_compare(model_dir, inputs, ref, seed, size, variant)
    if write_fixtures:
        manifest = json.loads((ckpt / "test_manifest.json").read_text())["files"]
        computed = set(manifest["s3gen"]["computed"])
        specs = {"t3": manifest["t3"]["spec"], "ve": manifest["ve"]["spec"],
                 "s3gen": [s for s in manifest["s3gen"]["spec"] if s[0] not in computed]}
        fx = {f"ref/{k}": v for k, v in ref.items() if k != "e2e/seconds"
              and not (k.startswith("t3/") and k.endswith(("/logits", "/probs")))}
        for mode, _ in SCENARIOS:  # the first steps' full distributions; every token
            for k in ("logits", "probs"):
                fx[f"ref/t3/{mode}/{k}"] = ref[f"t3/{mode}/{k}"][: parity.FIXTURE_STEPS]
        fx["ref/e2e/probs"] = ref["e2e/probs"][:PROBS_STEPS]
        if "e2e_voiced/wav" in ref:  # float16 keeps the fixture small (rounding ~2e-4: SNR ~65 dB)
            fx["ref/e2e_voiced/wav"] = ref["e2e_voiced/wav"].astype(np.float16)
        for k in [k for k in fx if k.startswith("ref/voice/")]:
            del fx[k]
        fx.update({f"ref/voice/{k}": v for k, v in compact_voice(sub(ref, "voice/")).items()})
        fx.update({f"spec/{k}": np.array(json.dumps(v)) for k, v in specs.items()})
        from .weights import random_state_dict

        fx.update({f"digest/{k}": np.array(digest(random_state_dict(v, seed))) for k, v in specs.items()})
        fx["tokenizer_sha256"] = np.array(manifest["tokenizer"]["sha256"])
        fx.update({"seed": np.array(seed), "variant": np.array(variant),
                   "inputs_digest": np.array(inputs_digest(inputs))})
        np.savez_compressed(parity.FIXTURES / f"turbo_{size}_{variant}.npz", **fx)
    return checks
