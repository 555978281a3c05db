"""One measurement of nightingale_mlx in a fresh process; prints one JSON line.

    python -m bench.worker MODEL_DIR --workload t3|s3gen|e2e|stream --tokens N [--cfg W] [--repeats R]

Every workload produces exactly N valid speech tokens (EOS and ids >= 6561 are masked), so both
implementations do the same work. `stream` is e2e through the streamer (TTS.stream's defaults:
first chunk after 12 tokens, then every 25) and reports the time to first audio twice: `ttfa_s` for
a voice's first sentence (T3 computes the conditioning rows' keys and values and stores them, as
TTS does), `ttfa_warm_s` for a later sentence or request with that voice (they are reused). `e2e` and
`stream` end with the Perth watermark (TTS's finishing step, on by default; `watermark_s` is its
share, None when no weights are found). Peak memory is this process's peak RSS. A Turbo/Nano model
runs as `TTS.generate` runs it: Turbo's sampling (no CFG; `--cfg` is ignored), 3 silence tokens
appended for S3Gen, its 2-step meanflow flow.
"""

import argparse
import itertools
import json
import time

import mlx.core as mx
import numpy as np

from bench.common import peak_rss_mb
from nightingale_mlx import watermark
from nightingale_mlx.config import S3GEN_SILENCE_TOKEN, SPEECH_VOCAB_SIZE, TURBO_SILENCE_TOKENS
from nightingale_mlx.models.s3gen import S3GEN_SR
from nightingale_mlx.model_io import load_config, load_s3gen, load_t3
from nightingale_mlx.sampling import SamplingParams
from nightingale_mlx.streaming import stream_tokens
from nightingale_mlx.tts import TURBO_SAMPLING
from nightingale_mlx.voice import Voice
from nightingale_mlx.watermark import WatermarkStream

TEXT_LEN = 60


def eos_masked_sampler(seed: int):
    key = mx.random.key(seed)

    def sample(logits):
        nonlocal key
        key, sub = mx.random.split(key)
        masked = mx.where(mx.arange(logits.shape[-1]) < SPEECH_VOCAB_SIZE, logits, -mx.inf)
        return mx.random.categorical(masked, key=sub)

    return sample


def t3_tokens(t3, voice, tokens: int, cfg: float, seed: int, stamps: list, prefix=None):
    """Yields exactly `tokens` speech tokens, stamping the time each one is ready. `prefix`: T3's
    store of the voice's conditioning keys and values (T3.inference), None for a plain prefill."""
    rng = np.random.default_rng(seed)
    text = mx.array(np.concatenate([[255], rng.integers(1, 700, TEXT_LEN), [0]]))
    cond = t3.condition(voice.speaker_emb, voice.prompt_tokens, 0.5)  # Turbo/Nano have no emotion input
    params = SamplingParams(**{**TURBO_SAMPLING, "max_new_tokens": tokens}) if t3.cfg.is_gpt2 else \
        SamplingParams(max_new_tokens=tokens, cfg_weight=cfg)
    for tok in t3.inference(cond, text, params, sampler=eos_masked_sampler(seed), prefix=prefix):
        stamps.append(time.perf_counter())
        yield tok


def run_once(workload: str, t3, s3gen, voice, tokens: int, cfg: float, seed: int, marker=None,
             silence: int = 0, prefix=None) -> dict:
    """`silence`: S3GEN_SIL tokens appended for S3Gen (Turbo: 3, as generate() appends them);
    `prefix`: see t3_tokens."""
    stamps = []
    finish = WatermarkStream(marker, S3GEN_SR)
    t0 = time.perf_counter()
    if workload == "stream":
        ttfa, wm_s = None, 0.0
        padded = itertools.chain(t3_tokens(t3, voice, tokens, cfg, seed, stamps, prefix),
                                 [S3GEN_SILENCE_TOKEN] * silence)
        for samples, final, _, _ in stream_tokens(s3gen, padded, voice, key=mx.random.key(seed), clock_start=t0):
            t = time.perf_counter()
            out = finish.push(samples, last=final)
            wm_s += time.perf_counter() - t
            ttfa = time.perf_counter() - t0 if ttfa is None and len(out) else ttfa
        return {"total_s": time.perf_counter() - t0, "audio_s": tokens * 0.04, "ttfa_s": ttfa,
                "watermark_s": wm_s if marker else None}
    if workload in ("t3", "e2e"):
        speech = list(t3_tokens(t3, voice, tokens, cfg, seed, stamps))
    else:
        speech = np.random.default_rng(seed).integers(0, 6561, tokens).tolist()
    t1 = time.perf_counter()
    if workload in ("s3gen", "e2e"):
        wav = s3gen.inference(speech, voice, silence_tokens=silence, key=mx.random.key(seed))
        mx.eval(wav)
    t2 = time.perf_counter()
    result = {"total_s": t2 - t0, "audio_s": tokens * 0.04}
    if workload == "e2e":
        finish.push(np.array(wav), last=True)
        t3_ = time.perf_counter()
        result.update(total_s=t3_ - t0, watermark_s=t3_ - t2 if marker else None)
    if stamps:
        result.update(prefill_s=stamps[0] - t0, decode_tok_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]))
    if workload != "t3":
        result["s3gen_s"] = t2 - t1
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--workload", choices=["t3", "s3gen", "e2e", "stream"], default="t3")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--cfg", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    config = load_config(args.model)
    t3 = load_t3(args.model, config)[0] if args.workload != "s3gen" else None
    s3gen = load_s3gen(args.model, config) if args.workload != "t3" else None
    voice = Voice.load(f"{args.model}/voices/default.safetensors")
    marker = watermark.load(args.model) if args.workload in ("e2e", "stream") else None
    silence = TURBO_SILENCE_TOKENS if config.is_turbo else 0
    cfg = 0.0 if config.is_turbo else args.cfg
    stream = args.workload == "stream"
    warm_prefix = {} if stream else None
    run_once(args.workload, t3, s3gen, voice, 8, cfg, seed=99, marker=marker, silence=silence,
             prefix=warm_prefix)  # warm-up; it stores the voice's prefix for the warm runs
    runs = [run_once(args.workload, t3, s3gen, voice, args.tokens, cfg, seed=i, marker=marker, silence=silence,
                     prefix={} if stream else None) for i in range(args.repeats)]
    summary = {k: float(np.median([r[k] for r in runs])) for k in runs[0] if runs[0][k] is not None}
    if stream:
        warm = [run_once(args.workload, t3, s3gen, voice, args.tokens, cfg, seed=i, marker=marker, silence=silence,
                         prefix=warm_prefix) for i in range(args.repeats)]
        summary["ttfa_warm_s"] = float(np.median([r["ttfa_s"] for r in warm]))
        runs += [{**r, "warm": True} for r in warm]
    print(json.dumps({"impl": "nightingale_mlx", "workload": args.workload, "recipe": config.quantization["recipe"],
                      "tokens": args.tokens, "cfg_weight": cfg, **summary, "runs": runs,
                      "peak_rss_mb": peak_rss_mb(), "device": str(mx.default_device())}))


if __name__ == "__main__":
    main()
