"""Our side of the end-to-end parity checks (project env, no torch): inputs, our run, the comparison.

The product path runs whole: `TTS.generate(text, language)` on a converted model dir, under the
`compat-0.1.7` profile, with the reference's built-in voice. Both sides are driven by the same
token choices (ours teacher-forces the tokens the reference sampled) and the same CFM and SineGen
noise. Shared by `parity.py` (`e2e_checks`, live reference) and tests/test_e2e_parity.py
(committed fixtures), so both assert the same checks with the same tolerances.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from nightingale_mlx.tts import TTS
from nightingale_mlx.voice import Voice

from . import flow_harness, hift_harness, t3_harness
from .weights import digest, random_conds

PROFILE = "compat-0.1.7"  # the profile parity is proven in (DESIGN §3)
N_TOKENS = 24  # speech tokens before EOS: ~1 s of audio
PROBS_STEPS = 4  # processed distributions kept in the fixture (8194 wide each)
SAMPLES_PER_FRAME = 480
# (text, language): the corpus's first sentence, which the synthetic vocabularies cover.
CASES = {"en": ("en", 0), "mtl-v2": ("fr", 0), "mtl-v3": ("fr", 0)}
CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "text" / "corpus.json"
T3_FILES = {"en": "t3_cfg.safetensors", "mtl-v2": "t3_mtl23ls_v2.safetensors", "mtl-v3": "t3_mtl23ls_v3.safetensors"}

# Component tolerances, composed: T3's processed probs (t3_harness), the flow's mel (flow_harness)
# and HiFT's waveform SNR (hift_harness). The mel feeds HiFT, so its ~1e-5 error stays well inside
# the SNR bound, which both the whole waveform and its unclipped samples must meet.
TOLERANCES = {
    size: {"probs": t3_harness.TOLERANCES[size]["probs"], "mel": flow_harness.TOLERANCES[size]["mel"],
           "snr_db": hift_harness.TOLERANCES[size]["snr_db"]}
    for size in ("tiny", "full")
}


def case(variant: str) -> tuple:
    language, index = CASES[variant]
    return json.loads(CORPUS.read_text("utf-8"))[language][index], language


def voice_of(conds: dict) -> Voice:
    """The built-in voice (conds.pt's arrays, from weights.random_conds) as our Voice, field by
    field as convert/voices.py maps it (the conds.pt reader itself is tested in test_voice.py)."""
    t3, gen = conds["t3"], conds["gen"]
    return Voice(speaker_emb=t3["speaker_emb"], prompt_tokens=t3["cond_prompt_speech_tokens"].astype(np.int32),
                 gen_prompt_token=gen["prompt_token"].astype(np.int32), gen_prompt_feat=gen["prompt_feat"],
                 gen_embedding=gen["embedding"])


def make_inputs(variant: str, seed: int, n_tokens: int = N_TOKENS) -> dict:
    """Text, T3's uniforms, the CFM noise (prompt + generated frames) and the SineGen randomness."""
    text, language = case(variant)
    gen = random_conds(seed)["gen"]
    frames = 2 * (gen["prompt_token"].shape[1] + n_tokens)  # mu covers prompt and generated tokens
    mel_frames = frames - gen["prompt_feat"].shape[1]
    rng = np.random.default_rng([seed, 61, list(CASES).index(variant)])
    return {
        "text": np.array(text), "language": np.array(language), "n_tokens": np.array(n_tokens),
        "uniforms": rng.random(n_tokens + 1),
        "cfm_noise": rng.standard_normal((1, frames, 80), dtype=np.float32),
        "phases": rng.uniform(-np.pi, np.pi, (1, hift_harness.N_SINES)).astype(np.float32),
        "sine_noise": rng.standard_normal((1, mel_frames * SAMPLES_PER_FRAME, hift_harness.N_SINES),
                                          dtype=np.float32),
    }


def inputs_digest(inputs: dict) -> str:
    return digest({k: v for k, v in inputs.items() if v.dtype.kind in "fiu"})


def run_ours(model_dir: Path, inputs: dict, forced_tokens, voice: Voice) -> dict:
    """TTS.generate on the converted dir, teacher-forcing `forced_tokens` (the reference's, EOS
    included) and injecting the inputs' noise into S3Gen; records what the reference records."""
    tts = TTS(model_dir, profile=PROFILE)
    forced = [int(t) for t in forced_tokens]
    probs = []

    def sampler(logits):
        if len(probs) < PROBS_STEPS:
            probs.append(np.array(mx.softmax(logits.astype(mx.float32), axis=-1)[0]))
        else:
            probs.append(None)
        return mx.array([forced[len(probs) - 1]])

    rec, s3gen_inference = {}, tts.s3gen.inference
    noise = {"noise": mx.array(inputs["cfm_noise"]), "phases": mx.array(inputs["phases"]),
             "sine_noise": mx.array(inputs["sine_noise"])}

    def s3gen_spy(tokens, voice, **kw):
        # Injects the shared noise (the seeded key is then unused) and keeps the pre-trim audio.
        valid = tts.s3gen.valid_tokens(tokens)
        rec["s3gen_tokens"] = np.array(valid).astype(np.int64)
        rec["mel"] = np.array(tts.s3gen.mel(valid, voice, noise=noise["noise"]))
        wav = s3gen_inference(tokens, voice, **{**kw, **noise})
        rec["wav_untrimmed"] = np.array(wav)
        return wav

    tts.s3gen.inference = s3gen_spy  # an instance attribute: the product method stays as it is
    text, language = str(inputs["text"]), str(inputs["language"])
    rec["text_tokens"] = np.array(tts.tokenizer.text_tokens(text, language), dtype=np.int64)
    audio = tts.generate(text, language=language, voice=voice, sampler=sampler, watermark=False)  # as patches.disable_watermark
    rec["probs"] = np.stack([p for p in probs if p is not None])
    rec["wav"] = audio.samples
    rec["steps"] = len(probs)
    return rec


def _same(name: str, ref, ours) -> dict:
    ref, ours = np.asarray(ref).reshape(-1), np.asarray(ours).reshape(-1)
    same = ref.shape == ours.shape and bool(np.array_equal(ref, ours))
    return {"name": name, "max_abs_err": float(not same), "max_rel_err": None, "tolerance": 0, "ok": same,
            "length": int(ref.size), **({} if same else {"ours": ours.tolist()[:40], "reference": ref.tolist()[:40]})}


def _snr_check(name: str, ref: np.ndarray, ours: np.ndarray, tol_db: float, **extra) -> dict:
    ref, ours = np.asarray(ref, np.float32).reshape(-1), np.asarray(ours, np.float32).reshape(-1)
    if ref.shape != ours.shape:
        return {"name": name, "max_abs_err": None, "max_rel_err": None, "tolerance": f"snr >= {tol_db} dB",
                "ok": False, "detail": f"length {ours.size} vs reference {ref.size}", **extra}
    inside = np.abs(ref) < hift_harness.CLIP_LEVEL
    snr = hift_harness.snr_db(ref, ours)
    snr_unclipped = hift_harness.snr_db(ref[inside], ours[inside]) if inside.any() else None
    return {"name": name, "max_abs_err": float(np.abs(ref - ours).max()), "max_rel_err": None,
            "tolerance": f"snr and unclipped snr >= {tol_db} dB", "snr_db": snr, "snr_db_unclipped": snr_unclipped,
            "clipped_fraction": float(1 - inside.mean()), "ok": min(snr, snr_unclipped or np.inf) >= tol_db, **extra}


def compare(ref: dict, ours: dict, size: str, prefix: str, min_p: float = 0.05) -> list:
    """Text ids, T3's tokens and first processed distributions, S3Gen's tokens, the mel, and the
    waveform: S3Gen's output (before our end-of-speech trim) whole, and generate()'s output as
    the matching prefix of the reference's (the reference does not trim)."""
    tol = TOLERANCES[size]
    checks = [_same(f"{prefix}.text_tokens", ref["text_tokens"], ours["text_tokens"]),
              _same(f"{prefix}.s3gen_tokens", ref["s3gen_tokens"], ours["s3gen_tokens"])]
    t3_steps = int(len(ref["tokens"]))
    checks.append({"name": f"{prefix}.t3_steps", "max_abs_err": float(abs(ours["steps"] - t3_steps)),
                   "max_rel_err": None, "tolerance": 0, "ok": int(ours["steps"]) == t3_steps, "steps": t3_steps})

    k = min(len(ref["probs"]), len(ours["probs"]))
    rp, op = ref["probs"][:k].astype(np.float64), ours["probs"][:k].astype(np.float64)
    check = t3_harness.processed_probs_check(f"{prefix}.processed_probs", rp, op, tol["probs"], min_p, steps=k)
    check["ok"] = check["ok"] and k == PROBS_STEPS
    checks.append(check)
    checks.append(flow_harness._err(f"{prefix}.mel", ref["mel"], ours["mel"], tol["mel"],
                                    frames=int(ref["mel"].shape[1])))

    wav_ref = np.asarray(ref["wav"], np.float32).reshape(-1)
    checks.append(_snr_check(f"{prefix}.wav_s3gen", wav_ref, ours["wav_untrimmed"], tol["snr_db"],
                             samples=int(wav_ref.size)))
    n = len(ours["wav"])
    checks.append(_snr_check(f"{prefix}.wav_generate_prefix", wav_ref[:n], ours["wav"], tol["snr_db"],
                             samples=n, trimmed_samples=int(wav_ref.size - n)))
    checks[-1]["ok"] = checks[-1]["ok"] and 0 < n <= wav_ref.size
    return checks


# ------------------------------------------------------------------ building our side


def write_checkpoint(ckpt: Path, variant: str, t3_state: dict, s3gen_state: dict, s3gen_file: str) -> Path:
    """t3 / s3gen (flow + mel2wav) in their original files, plus the committed tokenizer files."""
    from safetensors.numpy import save_file

    from . import text_harness

    ckpt.mkdir(parents=True, exist_ok=True)
    save_file(t3_state, str(ckpt / T3_FILES[variant]))
    flow_harness.write_s3gen(s3gen_state, ckpt, s3gen_file)
    text_harness.fixture_checkpoint(variant, ckpt)
    return ckpt


def convert_model(ckpt: Path, model_dir: Path, variant: str, size: str, components=("t3", "s3gen", "text")) -> Path:
    from convert.convert import convert

    from .sizes import t3_overrides

    return convert(ckpt, model_dir, variant=variant, profile=PROFILE, t3_overrides=t3_overrides(size),
                   components=list(components), force=True)


# ------------------------------------------------------------------ the live-reference driver


def e2e_checks(size: str, variant: str, seed: int, work: Path, write_fixtures: bool) -> list:
    """parity.py component: full checkpoint (ref env) -> reference generate() -> our conversion and
    TTS.generate with the same tokens and noise -> checks."""
    from . import parity, text_harness
    from .weights import conds_digest, random_state_dict

    ckpt, model_dir = work / "ckpt", work / "model"
    parity.run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt)
    manifest = json.loads((ckpt / "test_manifest.json").read_text())["files"]
    assert manifest["conds"]["digest"] == conds_digest(random_conds(seed)), "conds.pt is not random_conds(seed)"
    inputs = make_inputs(variant, seed)
    np.savez(work / "in.npz", **inputs)
    parity.run_ref("ref_e2e.py", "--ckpt", ckpt, "--inputs", work / "in.npz", "--out", work / "ref.npz")
    ref = dict(np.load(work / "ref.npz"))
    convert_model(ckpt, model_dir, variant, size, components=("t3", "s3gen", "text", "voices"))
    voice = voice_of(random_conds(seed))
    converted = Voice.load(model_dir / "voices" / "default.safetensors")
    same_voice = all(np.array_equal(np.array(getattr(voice, f)), np.array(getattr(converted, f)))
                     for f in ("speaker_emb", "prompt_tokens", "gen_prompt_token", "gen_prompt_feat", "gen_embedding"))
    assert same_voice, "our conversion of conds.pt differs from random_conds(seed)"
    ours = run_ours(model_dir, inputs, ref["tokens"], voice)
    checks = compare(ref, ours, size, f"e2e.{size}.{variant}")
    checks[-1]["seconds_reference"] = float(ref["seconds"])

    if write_fixtures:
        s3gen_spec = [s for s in manifest["s3gen"]["spec"] if s[0].startswith(("flow.", "mel2wav."))]
        fx = {f"ref/{k}": v for k, v in ref.items() if k not in ("seconds", "probs")}
        fx["ref/probs"] = ref["probs"][:PROBS_STEPS]
        fx.update({
            "t3_spec": np.array(json.dumps(manifest["t3"]["spec"])), "t3_digest": np.array(manifest["t3"]["digest"]),
            "s3gen_spec": np.array(json.dumps(s3gen_spec)), "s3gen_file": np.array(manifest["s3gen"]["file"]),
            "s3gen_digest": np.array(digest(random_state_dict(s3gen_spec, seed))),
            "tokenizer_sha256": np.array(text_harness.sha256(ckpt / manifest["tokenizer"]["file"])),
            "seed": np.array(seed), "variant": np.array(variant), "inputs_digest": np.array(inputs_digest(inputs)),
        })
        parity.FIXTURES.mkdir(exist_ok=True)
        np.savez_compressed(parity.FIXTURES / f"e2e_{size}_{variant}.npz", **fx)
    return checks

