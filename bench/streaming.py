"""Streaming benchmark: time to first audio, per-chunk cost, and stream vs generate() quality.

    python -m bench.streaming --size tiny|full [--json]

Both paths get IDENTICAL speech tokens (a fixed random list instead of T3, so the numbers are
S3Gen's) and identical noise (the streamer's absolute-frame buffers, sliced into generate()'s CFM
and vocoder source). `--size full` builds a full-size S3Gen with seeded random weights (the
harness's `random_tensor`, F0 head on a speaking pitch) and a random 6 s voice prompt.
"""

import argparse
import json
import sys
import time

import mlx.core as mx
import numpy as np

from bench.common import machine
from nightingale_mlx.audio.fade import trim_fade
from nightingale_mlx.streaming import (NOISE_BLOCK_FRAMES, SINE_NOISE_BLOCK, NoiseBuffer, S3GenStreamer,
                                       StreamConfig, boundary_hf_ratio, stream_tokens)

SR = 24000
PROMPT_TOKENS = 150  # the reference's 6 s S3Gen prompt at 25 tokens/s
UTTERANCE_TOKENS = 250  # 10 s
LONG_TOKENS = 12 + 20 * 25 + 10  # reaches chunk 20 (and a bit) with the default chunk sizes
ENVELOPE_WINDOW = 240  # 10 ms RMS envelope


def full_size_s3gen(seed: int = 0):
    """Full-size S3Gen and a voice, with seeded random weights (no checkpoint needed)."""
    from mlx.utils import tree_flatten, tree_unflatten

    from nightingale_mlx.config import FlowConfig, HiFTConfig
    from nightingale_mlx.models.s3gen import S3Gen
    from nightingale_mlx.random_weights import random_tensor
    from nightingale_mlx.voice import Voice

    model = S3Gen(FlowConfig(), HiFTConfig())
    # MLX names equal the checkpoint's, so each tensor gets the harness's distribution for its name.
    params = [(k, mx.array(random_tensor(k, v.shape, seed))) for k, v in tree_flatten(model.parameters())]
    model.update(tree_unflatten(params))
    model.eval()
    mx.eval(model.parameters())
    rng = np.random.default_rng(seed)
    voice = Voice(
        speaker_emb=rng.standard_normal((1, 256)).astype(np.float32),
        prompt_tokens=rng.integers(0, 6561, (1, PROMPT_TOKENS)).astype(np.int32),
        gen_prompt_token=rng.integers(0, 6561, (1, PROMPT_TOKENS)).astype(np.int32),
        gen_prompt_feat=(rng.standard_normal((1, 2 * PROMPT_TOKENS, 80)) * 2 - 6).astype(np.float32),
        gen_embedding=rng.standard_normal((1, 192)).astype(np.float32),
    )
    return model, voice


def tiny_s3gen():
    import tempfile
    from pathlib import Path

    import nightingale_mlx as ng
    from nightingale_mlx.synthetic import synthetic_model

    tts = ng.TTS(synthetic_model(Path(tempfile.gettempdir()) / "nightingale-bench-synthetic"))
    return tts.s3gen, tts.resolve_voice(None)


class Noise:
    """The injected randomness, shared by stream() and generate()."""

    def __init__(self, s3gen, seed: int):
        flow_key, hift_key = mx.random.split(mx.random.key(seed))
        phase_key, sine_key = mx.random.split(hift_key)
        H = s3gen.mel2wav.m_source.n_harmonics
        self.cfm = NoiseBuffer(flow_key, s3gen.flow.cfg.output_size, NOISE_BLOCK_FRAMES)
        self.sine = NoiseBuffer(sine_key, H, SINE_NOISE_BLOCK)
        self.phases = mx.random.uniform(-np.pi, np.pi, (1, H), key=phase_key)


def run_generate(s3gen, voice, tokens, noise: Noise):
    """generate()'s S3Gen work (S3Gen.inference's steps) with the injected noise: (seconds, mel, wav)."""
    t0 = time.perf_counter()
    tok = s3gen.valid_tokens(tokens)
    frames = 2 * (voice.gen_prompt_token.shape[1] + tok.shape[0])
    mel = s3gen.mel(tok, voice, noise=noise.cfm.slice(0, frames))
    wav = s3gen.mel2wav(mel, phases=noise.phases, noise=noise.sine.slice(0, 480 * mel.shape[1]))
    wav = np.array(trim_fade(wav[0]))
    return time.perf_counter() - t0, np.array(mel[0]), wav


def run_stream(s3gen, voice, tokens, noise: Noise, config: StreamConfig):
    streamer = S3GenStreamer(s3gen, voice, config=config, noise=noise.cfm, sine_noise=noise.sine,
                             phases=noise.phases, keep_mel=True)
    t0 = time.perf_counter()
    chunks = []
    for samples, _, tokens_ready, audio_ready in stream_tokens(s3gen, iter(tokens), voice, streamer=streamer,
                                                               clock_start=t0):
        chunks.append((samples, audio_ready - tokens_ready, audio_ready))
    return chunks, np.concatenate(streamer.mel)


def envelope(x: np.ndarray) -> np.ndarray:
    n = len(x) // ENVELOPE_WINDOW * ENVELOPE_WINDOW
    return np.sqrt(np.mean(x[:n].reshape(-1, ENVELOPE_WINDOW) ** 2, axis=1))


def quality(chunks, stream_mel, gen_mel, gen_wav) -> dict:
    out = np.concatenate([c[0] for c in chunks])
    n = min(len(out), len(gen_wav))
    err = np.sum((stream_mel - gen_mel) ** 2)
    boundaries = np.cumsum([len(c[0]) for c in chunks])[:-1]
    return {
        "mel_snr_db": float(10 * np.log10(np.sum(gen_mel**2) / max(err, 1e-30))),
        # The same against the mel's deviation from its mean (log-mels sit far from 0).
        "mel_snr_centered_db": float(10 * np.log10(np.sum((gen_mel - gen_mel.mean()) ** 2) / max(err, 1e-30))),
        "envelope_corr": float(np.corrcoef(envelope(out[:n]), envelope(gen_wav[:n]))[0, 1]),
        "boundary_hf_ratio": boundary_hf_ratio(out, boundaries, SR),
        "generate_boundary_hf_ratio": boundary_hf_ratio(gen_wav, boundaries, SR),  # same places, no seams
        "length_diff_samples": int(len(out) - len(gen_wav)),
        "ttfa_s": float(chunks[0][2]),
        "chunks": len(chunks),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contexts", default="12,25,50,100,all",
                   help="context_tokens values to compare; 'all' (unbounded: every token so far, prompt included) "
                        "is the best any streamer can do without future tokens")
    p.add_argument("--tokens", type=int, default=UTTERANCE_TOKENS)
    p.add_argument("--long-tokens", type=int, default=LONG_TOKENS)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    s3gen, voice = full_size_s3gen(args.seed) if args.size == "full" else tiny_s3gen()
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, 6561, args.tokens).tolist()
    noise = Noise(s3gen, args.seed)
    run_generate(s3gen, voice, tokens[:20], noise)  # warm-up (compiles, allocates)
    generate_s, gen_mel, gen_wav = run_generate(s3gen, voice, tokens, noise)

    default = StreamConfig()
    sweep = {}
    unbounded = voice.gen_prompt_token.shape[1] + len(tokens)  # reaches back to the first prompt token
    contexts = {c.strip() for c in args.contexts.split(",")} | {str(default.context_tokens)}
    for name in sorted(contexts, key=lambda c: unbounded if c == "all" else int(c)):
        ctx = unbounded if name == "all" else int(name)
        chunks, mel = run_stream(s3gen, voice, tokens, noise, StreamConfig(context_tokens=ctx))
        sweep[name] = quality(chunks, mel, gen_mel, gen_wav)
        print(f"context {name}: {json.dumps(sweep[name])}", file=sys.stderr)

    long_tokens = np.random.default_rng(args.seed + 1).integers(0, 6561, args.long_tokens).tolist()
    chunks, _ = run_stream(s3gen, voice, long_tokens, noise, default)
    per_chunk = [{"compute_s": round(c[1], 4), "audio_s": round(len(c[0]) / SR, 4)} for c in chunks]
    # Chunks 19-21 against chunks 2-4 (the first chunk is smaller), as medians: one chunk's wall
    # time on a shared CPU is too noisy to compare alone.
    latency = [c[1] for c in chunks]
    ratio = float(np.median(latency[18:21]) / np.median(latency[1:4])) if len(chunks) > 21 else float("nan")

    picked = sweep[str(default.context_tokens)]
    result = {
        "ttfa_s": picked["ttfa_s"],
        "generate_s": generate_s,
        "mel_snr_db": picked["mel_snr_db"],
        "envelope_corr": picked["envelope_corr"],
        "boundary_hf_ratio": picked["boundary_hf_ratio"],
        "chunk_latency_ratio_20_vs_2": ratio,
        "length_diff_samples": picked["length_diff_samples"],
        "size": args.size,
        "utterance_s": len(gen_wav) / SR,
        "ttfa_fraction_of_generate": picked["ttfa_s"] / generate_s,
        "stream_config": default.__dict__,
        "context_sweep": sweep,
        "long_per_chunk": per_chunk,
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if k not in ("context_sweep", "long_per_chunk", "machine"):
                print(f"{k:30s} {v}")
    return result


if __name__ == "__main__":
    main()
