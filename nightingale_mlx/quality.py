"""Quantization quality: a quantized model dir measured against its fp32 twin (same weights).

`nightingale quality -m MODEL_Q --ref MODEL_FP32` reports:
- T3, teacher-forced on the reference's own speech tokens (same voice and text): relative error of
  the raw logits (both CFG rows), KL(ref || quantized) of the sampling distribution after CFG,
  repetition penalty and temperature, total variation after min-p/top-p (KL is infinite where
  the truncated supports differ), and top-1 agreement;
- S3Gen with the same tokens and injected noise (CFM noise, SineGen phases and noise): mel SNR,
  waveform SNR from tokens (flow + HiFT), and HiFT alone on the reference mel;
- free-running T3 with the same sampler seed: how many tokens agree before the first divergence;
- size on disk of each dir and peak process RSS (VmHWM on Linux) of a fresh subprocess
  per model, after loading and after generating.

With random weights the numbers are a proxy for trained ones (bench/quant_sensitivity.py shows how
outlier-heavy weights change them).
"""

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import mlx.core as mx
import numpy as np

from . import quant
from .sampling import SamplingParams, apply_cfg, apply_min_p, apply_repetition_penalty, apply_top_p, process_logits

DEFAULT_TEXT = "Quantization should keep the voice intact while the model shrinks to a fraction of its size."
DEFAULT_STEPS = 50
EXAGGERATION = 0.5


class QualityError(ValueError):
    """The two models cannot be compared (different architectures, no speech tokens, no voice)."""


def snr_db(reference, test) -> float:
    """10 log10(|ref|^2 / |test - ref|^2); inf when identical."""
    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    if reference.shape != test.shape:
        raise QualityError(f"shapes differ: {reference.shape} vs {test.shape}; compare models of one checkpoint")
    err = np.sum((test - reference) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(reference ** 2) / err))


def dir_size_bytes(path) -> int:
    """Bytes of every file under a converted model dir."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    Linux: VmHWM, the peak of this process image. getrusage's ru_maxrss is not used there: it
    survives fork + exec, so a fresh worker started by a large parent reports the parent's peak.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # macOS: ru_maxrss in bytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kib / 1024


# --- T3 ---------------------------------------------------------------------------------------


def teacher_forced_logits(t3, voice, ids: List[int], tokens: List[int]) -> mx.array:
    """Logits (2, n, V) float32 (CFG rows cond/uncond) predicting each of `tokens` given the ones before,
    in one forward pass: [prefill | tokens[:-1]] with each token at its decode position."""
    cond = t3.condition(voice.speaker_emb, voice.prompt_tokens, EXAGGERATION)
    cfg = not t3.cfg.is_gpt2  # Turbo/Nano have no CFG row: (1, n, V)
    prefill = t3.prefill_embeddings(cond, mx.array(ids), cfg)
    n = len(tokens)
    speech = t3.speech_emb(mx.array(tokens[:-1])[None])
    if t3.cfg.learned_input_pos:  # GPT-2 adds its positions inside the backbone
        speech = speech + t3.speech_pos_emb.emb(mx.arange(1, n))
    embeds = mx.concatenate([prefill, mx.broadcast_to(speech, (prefill.shape[0], n - 1, speech.shape[-1]))], axis=1)
    hidden, _ = t3(embeds, t3.make_cache())
    return t3.speech_head(hidden[:, prefill.shape[1] - 1:]).astype(mx.float32)


def sampling_logits(logits: mx.array, tokens: List[int], start_token: int, params: SamplingParams,
                    bos_always_penalised: bool = True):
    """(2, n, V) raw (or (1, n, V) without CFG) -> (penalised+tempered (n, V), truncated (n, V)) as the
    sampler sees them per step."""
    guided = apply_cfg(logits, params.cfg_weight)[0] if logits.shape[0] == 2 else logits[0]  # (n, V)
    n, V = guided.shape
    seen = np.zeros((n, V), bool)
    # The penalty covers BOS at every step of T3.inference, at the first step only of inference_turbo.
    seen[: n if bos_always_penalised else 1, start_token] = True
    for i, t in enumerate(tokens[:-1]):
        seen[i + 1:, t] = True
    x = apply_repetition_penalty(guided, mx.array(seen), params.repetition_penalty)
    if params.temperature > 0 and params.temperature != 1.0:
        x = x / params.temperature
    if params.order == "warpers_first":
        return x, process_logits(guided, mx.array(seen), params)
    return x, apply_top_p(apply_min_p(x, params.min_p), params.top_p)


def t3_metrics(t3_q, t3_ref, voice, ids: List[int], tokens: List[int], params: SamplingParams) -> Dict:
    """Teacher-forced logit error, KL, total variation and top-1 agreement over `tokens`."""
    if len(tokens) < 2:
        raise QualityError("the reference produced fewer than 2 speech tokens; use a longer text")
    ref, q = (teacher_forced_logits(m, voice, ids, tokens) for m in (t3_ref, t3_q))
    rel = float(mx.linalg.norm(q - ref) / mx.linalg.norm(ref))
    start = t3_ref.cfg.start_speech_token
    bos_always = t3_ref.cfg.bos_always_penalised
    (p_full, p_cut), (q_full, q_cut) = (sampling_logits(x, tokens, start, params, bos_always) for x in (ref, q))
    logp, logq = (x - mx.logsumexp(x, axis=-1, keepdims=True) for x in (p_full, q_full))
    kl = mx.sum(mx.exp(logp) * (logp - logq), axis=-1)
    tv = 0.5 * mx.sum(mx.abs(mx.softmax(p_cut, axis=-1) - mx.softmax(q_cut, axis=-1)), axis=-1)
    top1 = mx.argmax(p_full, axis=-1) == mx.argmax(q_full, axis=-1)
    return {"steps": len(tokens), "logits_rel_err": rel, "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "tv_mean": float(tv.mean()), "top1_agreement": float(top1.astype(mx.float32).mean())}


# --- S3Gen ------------------------------------------------------------------------------------


def s3gen_noise(s3gen, voice, n_tokens: int, key: mx.array):
    """CFM noise (1, T, 80) for the prompt + generated frames, SineGen phases (1, H) and a function
    mel_frames -> SineGen noise (1, frames * factor, H): the same draws for both models."""
    k_cfm, k_phase, k_sine = mx.random.split(key, 3)
    frames = 2 * (voice.gen_prompt_token.shape[1] + n_tokens)
    noise = mx.random.normal((1, frames, voice.gen_prompt_feat.shape[2]), key=k_cfm)
    source = s3gen.mel2wav.m_source
    phases = mx.random.uniform(-np.pi, np.pi, (1, source.n_harmonics), key=k_phase)
    return noise, phases, lambda t: mx.random.normal((1, t * source.factor, source.n_harmonics), key=k_sine)


def s3gen_outputs(s3gen, voice, tokens: mx.array, noise, phases, sine_noise):
    """(mel, waveform) of one model from tokens, with the injected noise (cast as the flow draws it)."""
    mel = s3gen.mel(tokens, voice, noise=noise.astype(quant.parameter_dtype(s3gen.flow))).astype(mx.float32)
    wav = s3gen.mel2wav(mel, phases=phases, noise=sine_noise(mel.shape[1]))[0]
    mx.eval(mel, wav)
    return mel, wav


def s3gen_metrics(s3_q, s3_ref, voice, tokens: List[int], key: mx.array) -> Dict:
    """Mel SNR and waveform SNR from the same tokens and noise; HiFT alone on the reference mel."""
    valid = s3_ref.valid_tokens(tokens)
    if valid.size == 0:
        raise QualityError("no valid speech tokens to vocode; use a longer text")
    noise, phases, sine_noise = s3gen_noise(s3_ref, voice, valid.shape[0], key)
    mel_r, wav_r = s3gen_outputs(s3_ref, voice, valid, noise, phases, sine_noise)
    mel_q, wav_q = s3gen_outputs(s3_q, voice, valid, noise, phases, sine_noise)
    hift_q = s3_q.mel2wav(mel_r, phases=phases, noise=sine_noise(mel_r.shape[1]))[0]
    # With the reference's f0 too, the F0 predictor's error (which the SineGen integrates into phase
    # drift over the whole clip) is separated from the rest of the vocoder's.
    f0 = s3_ref.mel2wav.predict_f0(mel_r)
    same_f0 = s3_q.mel2wav(mel_r, phases=phases, noise=sine_noise(mel_r.shape[1]), f0=f0)[0]
    return {"tokens": int(valid.shape[0]), "mel_snr_db": snr_db(mel_r, mel_q), "wav_snr_db": snr_db(wav_r, wav_q),
            "hift_wav_snr_db": snr_db(wav_r, hift_q), "hift_same_f0_wav_snr_db": snr_db(wav_r, same_f0)}


# --- whole models -----------------------------------------------------------------------------


def _check_same_architecture(tts_q, tts_ref) -> None:
    if tts_q.config.t3 != tts_ref.config.t3 or tts_q.config.s3gen != tts_ref.config.s3gen:
        raise QualityError(f"{tts_q.model_dir} and {tts_ref.model_dir} are not conversions of one checkpoint "
                           "(their T3/S3Gen configs differ)")


def compare(model_q, model_ref, steps: int = DEFAULT_STEPS, text: str = DEFAULT_TEXT, language: str = "en",
            seed: int = 0, memory: bool = True) -> Dict:
    """Quality of converted dir `model_q` against `model_ref` (fp32 of the same checkpoint), as a dict."""
    from .tts import TTS

    tts_ref, tts_q = TTS(model_ref), TTS(model_q)
    _check_same_architecture(tts_q, tts_ref)
    voice = tts_ref.resolve_voice(None)
    params = tts_ref.sampling_params(max_new_tokens=steps)
    ids = tts_ref.tokenizer.text_tokens(text, language)

    def sampled(tts):
        return list(tts.speech_tokens(text, language, voice, EXAGGERATION, params, mx.random.key(seed), steps))

    t0 = time.perf_counter()
    tokens = sampled(tts_ref)
    result = {"model": str(model_q), "ref": str(model_ref), "recipe": tts_q.config.quantization,
              "note": "random weights are a proxy for trained ones"}
    result["t3"] = t3_metrics(tts_q.t3, tts_ref.t3, voice, ids, tokens, params)
    result["s3gen"] = s3gen_metrics(tts_q.s3gen, tts_ref.s3gen, voice, tokens, mx.random.key(seed + 1))
    free = sampled(tts_q)
    agree = next((i for i, (a, b) in enumerate(zip(tokens, free)) if a != b), min(len(tokens), len(free)))
    result["e2e"] = {"sampled_tokens": len(tokens), "tokens_before_divergence": agree}
    result["size_bytes"] = {"model": dir_size_bytes(model_q), "ref": dir_size_bytes(model_ref)}
    result["size_ratio"] = result["size_bytes"]["model"] / result["size_bytes"]["ref"]
    result["seconds"] = time.perf_counter() - t0
    del tts_q, tts_ref
    if memory:
        result["memory"] = {"model": peak_memory(model_q, text, steps, seed),
                            "ref": peak_memory(model_ref, text, steps, seed)}
        result["memory_ratio"] = result["memory"]["model"]["generate_mb"] / result["memory"]["ref"]["generate_mb"]
    return result


def peak_memory(model_dir, text: str = DEFAULT_TEXT, steps: int = DEFAULT_STEPS, seed: int = 0) -> Dict:
    """Peak process RSS (MB) of a fresh subprocess after loading `model_dir` and after generating."""
    cmd = [sys.executable, "-m", "nightingale_mlx.quality", "--memory-worker", str(model_dir),
           "--steps", str(steps), "--seed", str(seed), "--text", text]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise QualityError(f"memory measurement of {model_dir} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_worker(model_dir: str, text: str, steps: int, seed: int) -> Dict:
    from .tts import TTS

    base = peak_rss_mb()
    tts = TTS(model_dir)
    tts.resolve_voice(None)
    loaded = peak_rss_mb()
    audio = tts.generate(text, language="en", seed=seed, max_new_tokens=steps)
    return {"baseline_mb": base, "loaded_mb": loaded, "generate_mb": peak_rss_mb(),
            "speech_tokens": audio.info["speech_tokens"], "measure": "process peak RSS (VmHWM on Linux)"}


def report(result: Dict) -> str:
    """A few readable lines of one `compare` result."""
    t3, s3, e2e = result["t3"], result["s3gen"], result["e2e"]
    lines = [
        f"{result['model']} vs {result['ref']} ({result['recipe'].get('recipe')}; {result['note']})",
        f"  T3 ({t3['steps']} teacher-forced steps): logits rel err {100 * t3['logits_rel_err']:.3f}%, "
        f"KL {t3['kl_mean']:.2e} (max {t3['kl_max']:.2e}), TV {t3['tv_mean']:.4f}, top-1 {100 * t3['top1_agreement']:.1f}%",
        f"  S3Gen ({s3['tokens']} tokens): mel SNR {s3['mel_snr_db']:.1f} dB, waveform SNR {s3['wav_snr_db']:.1f} dB, "
        f"HiFT alone {s3['hift_wav_snr_db']:.1f} dB ({s3['hift_same_f0_wav_snr_db']:.1f} dB with the reference's f0)",
        f"  free-running T3, same seed: {e2e['tokens_before_divergence']}/{e2e['sampled_tokens']} tokens agree",
        f"  size on disk: {result['size_bytes']['model'] / 1e6:.1f} MB vs {result['size_bytes']['ref'] / 1e6:.1f} MB "
        f"({100 * result['size_ratio']:.1f}%)",
    ]
    if "memory" in result:
        m, r = result["memory"]["model"], result["memory"]["ref"]
        lines.append(f"  peak process RSS: loaded {m['loaded_mb']:.0f} vs {r['loaded_mb']:.0f} MB, generating "
                     f"{m['generate_mb']:.0f} vs {r['generate_mb']:.0f} MB ({100 * result['memory_ratio']:.1f}%)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="memory worker of `nightingale quality` (one model per process)")
    p.add_argument("--memory-worker", required=True, metavar="MODEL_DIR")
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(_memory_worker(args.memory_worker, args.text, args.steps, args.seed)))


if __name__ == "__main__":
    main()
