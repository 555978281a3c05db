"""Our side of the voice-cloning parity checks (project env, no torch), shared by `parity.py`
(live reference) and `tests/test_cloning_parity.py` (committed fixtures).

Every clip is checked end to end (file -> Voice) and stage by stage on the reference's own
intermediate inputs, so a difference is pinned to one stage: resampler, mel/fbank, network.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from nightingale_mlx.audio.fbank import kaldi_fbank
from nightingale_mlx.audio.mel import S3_TOKENIZER_MEL, VE_MEL, mel_spectrogram
from nightingale_mlx.audio.resample import resample_sinc, resample_soxr
from nightingale_mlx.audio.trim import trim_silence
from nightingale_mlx.config import DEC_COND_SECONDS, ENC_COND_SECONDS, S3_SR, S3GEN_SR
from nightingale_mlx.voice import load_reference, prepare_voice

from .t3_harness import _err

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
CLIPS = ["speech_long.flac", "speech_odd.flac"]  # 7.2 s (T3 crop at 6 s), 2.36 s (odd mel length)
# Raw 16 kHz signals are kept in the fixture for the last clip only (size); the live run checks all.
FIXTURE_SIGNALS_CLIP = 1

# fp32 tolerances. Mels: ln/log10 levels of O(1-10); fbank: ln energies (FFT at 512 points);
# the VE mel is a linear power: compared relative to its peak.
TOLERANCES = {
    "soxr": 1e-6,
    "sinc": 2e-6,
    "tok_mel": 2e-4,
    "fbank": 5e-3,  # ln of mel energies: bins near the eps floor amplify fp32 FFT rounding
    "ve_mel_rel": 2e-5,
    "prompt_feat": 5e-4,  # ln(clamp(mel, 1e-5)): the same amplification near the clamp
    "cosine": 0.9999,
    "token_flip_fraction": 0.0,
}


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_ours(models, clip: Path, ref: dict) -> dict:
    """Our Voice for `clip`, our intermediates, and our stages run on the reference's inputs."""
    voice = prepare_voice(models, clip)
    out = {k: np.array(getattr(voice, k)) for k in
           ("speaker_emb", "prompt_tokens", "gen_prompt_token", "gen_prompt_feat", "gen_embedding")}
    ref24 = load_reference(clip)
    ref16 = resample_soxr(ref24, S3GEN_SR, S3_SR)
    out["ref16"] = ref16
    out["ref16_ta"] = resample_sinc(ref24[: DEC_COND_SECONDS * S3GEN_SR], S3GEN_SR, S3_SR)
    # Stages on the reference's inputs (or on its features where the signal is not stored).
    out["tok_mel"] = np.array(mel_spectrogram(ref16[: ENC_COND_SECONDS * S3_SR], S3_TOKENIZER_MEL))
    out["same_mel/prompt_tokens"] = np.array(models.tokenizer.quantize(mx.array(ref["tok_mel"])[None]))
    fbank_in = ref["ref16_ta"] if "ref16_ta" in ref else out["ref16_ta"]
    out["fbank"] = np.array(kaldi_fbank(fbank_in))
    out["same_fbank/gen_embedding"] = np.array(models.speaker_encoder(mx.array(ref["fbank"])[None]))
    if "ref16_ta" in ref:
        out["same_input/gen_prompt_token"] = np.array(models.tokenizer(ref["ref16_ta"]))
    ve_in = ref["ref16"] if "ref16" in ref else ref16
    trimmed = trim_silence(ve_in)
    out["ve_trim_len"] = np.array(trimmed.size)
    out["ve_mel"] = np.array(mel_spectrogram(trimmed, VE_MEL))
    return out


def _tokens(name, ref, ours, allowed_fraction=0.0, **extra):
    ref, ours = np.asarray(ref).ravel(), np.asarray(ours).ravel()
    if ref.shape != ours.shape:
        return {"name": name, "max_abs_err": None, "max_rel_err": None, "tolerance": allowed_fraction,
                "ok": False, "detail": f"length {ours.size} vs reference {ref.size}"}
    flips = int((ref != ours).sum())
    frac = flips / max(ref.size, 1)
    return {"name": name, "max_abs_err": frac, "max_rel_err": None, "tolerance": allowed_fraction,
            "ok": frac <= allowed_fraction, "flips": flips, "tokens": int(ref.size), **extra}


def _cos(name, ref, ours):
    c = cosine(ref, ours)
    err = float(np.abs(np.asarray(ref, np.float64) - np.asarray(ours, np.float64)).max())
    return {"name": name, "max_abs_err": err, "max_rel_err": None, "cosine": c,
            "tolerance": TOLERANCES["cosine"], "ok": c >= TOLERANCES["cosine"]}


def compare(ref: dict, ours: dict, prefix: str) -> list:
    t = TOLERANCES
    checks = []
    if "ref16" in ref:
        checks.append(_err(f"{prefix}.resample_soxr_24k_16k", ref["ref16"], ours["ref16"], t["soxr"]))
    if "ref16_ta" in ref:
        checks.append(_err(f"{prefix}.resample_sinc_24k_16k", ref["ref16_ta"], ours["ref16_ta"], t["sinc"]))
        checks.append(_tokens(f"{prefix}.gen_prompt_token_same_input", ref["gen_prompt_token"],
                              ours["same_input/gen_prompt_token"][:, : ref["gen_prompt_token"].shape[1]]))
    checks.append(_err(f"{prefix}.tokenizer_mel", ref["tok_mel"], ours["tok_mel"], t["tok_mel"]))
    checks.append(_tokens(f"{prefix}.prompt_tokens_same_mel", ref["prompt_tokens"], ours["same_mel/prompt_tokens"]))
    checks.append(_tokens(f"{prefix}.prompt_tokens", ref["prompt_tokens"], ours["prompt_tokens"],
                          t["token_flip_fraction"]))
    checks.append(_tokens(f"{prefix}.gen_prompt_token", ref["gen_prompt_token"], ours["gen_prompt_token"],
                          t["token_flip_fraction"]))
    checks.append(_err(f"{prefix}.kaldi_fbank", ref["fbank"], ours["fbank"], t["fbank"]))
    checks.append(_cos(f"{prefix}.campplus_same_fbank", ref["gen_embedding"], ours["same_fbank/gen_embedding"]))
    checks.append(_cos(f"{prefix}.gen_embedding", ref["gen_embedding"], ours["gen_embedding"]))
    trim_len = int(ref["ve_trim"][1] - ref["ve_trim"][0])
    checks.append({"name": f"{prefix}.ve_trim", "max_abs_err": float(abs(trim_len - int(ours["ve_trim_len"]))),
                   "max_rel_err": None, "tolerance": 0, "ok": trim_len == int(ours["ve_trim_len"])})
    scale = float(np.abs(ref["ve_mel"]).max())
    check = _err(f"{prefix}.ve_mel_rel_to_peak", ref["ve_mel"] / scale, ours["ve_mel"] / scale, t["ve_mel_rel"])
    checks.append(check)
    checks.append(_cos(f"{prefix}.speaker_emb", ref["speaker_emb"], ours["speaker_emb"]))
    checks.append(_err(f"{prefix}.gen_prompt_feat", ref["gen_prompt_feat"], ours["gen_prompt_feat"], t["prompt_feat"]))
    return checks


def check_clips(models, ref_npz: dict, prefix: str, audio_dir: Path = FIXTURES / "audio") -> list:
    checks = []
    for i, name in enumerate(CLIPS):
        ref = {k.split("/", 1)[1]: v for k, v in ref_npz.items() if k.startswith(f"{i}/")}
        ours = run_ours(models, audio_dir / name, ref)
        checks += compare(ref, ours, f"{prefix}.{Path(name).stem}")
    return checks


def cloning_checks(size: str, variant: str, seed: int, work: Path, write_fixtures: bool) -> list:
    """parity.py COMPONENTS entry: reference checkpoint -> our conversion -> both prepare the clips."""
    from convert.cloning import convert_cloning
    from convert.checkpoint import read_checkpoint
    from nightingale_mlx import quant

    from . import parity
    from .weights import digest

    ckpt = work / "ckpt"
    parity.run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt,
                   "--only", "ve,s3gen")
    models, _ = convert_cloning(ckpt, variant, quant.Recipe.parse("fp32"))
    clips = [FIXTURES / "audio" / c for c in CLIPS]
    parity.run_ref("ref_cloning.py", "--ckpt", ckpt, "--variant", variant, "--size", size,
                   "--out", work / "ref.npz", "--clips", *clips)
    ref = dict(np.load(work / "ref.npz"))
    checks = check_clips(models, ref, f"cloning.{size}.{variant}")
    if write_fixtures and variant == "mtl-v2":
        # The cloning tensors have the same names (so the same seeded values) in every variant;
        # one fixture covers them, written in the English safetensors format by the CI test.
        manifest = json.loads((ckpt / "test_manifest.json").read_text())["files"]
        spec = {"ve": manifest["ve"]["spec"],
                "s3gen": [s for s in manifest["s3gen"]["spec"] if s[0].startswith(("tokenizer.", "speaker_encoder."))]}
        s3gen = read_checkpoint(ckpt / manifest["s3gen"]["file"])
        subset = {k: s3gen[k] for k, *_ in spec["s3gen"]}
        fixture = {k: v for k, v in ref.items()
                   if not (k.split("/", 1)[1] in ("ref16", "ref16_ta") and not k.startswith(f"{FIXTURE_SIGNALS_CLIP}/"))}
        fixture.update(spec=np.array(json.dumps(spec)), seed=np.array(seed),
                       digest_ve=np.array(manifest["ve"]["digest"]), digest_s3gen_subset=np.array(digest(subset)))
        np.savez_compressed(FIXTURES / f"cloning_{size}_{variant}.npz", **fixture)
    return checks

