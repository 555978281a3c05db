"""One T3 measurement in a fresh process: `python -m bench.t3_worker MODEL_DIR --tokens N [--cfg W]`.

Prints one JSON line: prefill seconds (prompt to first token), decode tokens/s, peak RSS.
EOS is masked so every run decodes exactly N tokens.
"""

import argparse
import json
import time

import mlx.core as mx
import numpy as np

from bench.common import peak_rss_mb
from nightingale_mlx.model_io import load_t3
from nightingale_mlx.sampling import SamplingParams


def run(model, tokens: int, cfg_weight: float, text_len: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    spk = mx.array(np.abs(rng.standard_normal((1, 256))).astype(np.float32) / 16)
    cond = model.condition(spk, mx.array(rng.integers(0, 6561, (1, 150))), 0.5)
    text = mx.array(np.concatenate([[255], rng.integers(1, 700, text_len), [0]]))
    params = SamplingParams(max_new_tokens=tokens, cfg_weight=cfg_weight)
    eos = model.cfg.stop_speech_token
    key = mx.random.key(seed)

    def sampler(logits):
        nonlocal key
        key, sub = mx.random.split(key)
        return mx.random.categorical(mx.where(mx.arange(logits.shape[-1]) == eos, -mx.inf, logits), key=sub)

    t0 = time.perf_counter()
    gen = model.inference(cond, text, params, sampler=sampler)
    next(gen)
    t1 = time.perf_counter()
    n = 1 + sum(1 for _ in gen)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_tok_s": (n - 1) / (t2 - t1), "tokens": n}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--cfg", type=float, default=0.5)
    p.add_argument("--text-len", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model, config = load_t3(args.model)
    run(model, 8, args.cfg, args.text_len, seed=99)  # warm-up
    runs = [run(model, args.tokens, args.cfg, args.text_len, seed=i) for i in range(args.repeats)]
    med = lambda k: float(np.median([r[k] for r in runs]))
    print(json.dumps({
        "recipe": config.quantization["recipe"], "cfg_weight": args.cfg, "tokens": args.tokens,
        "prefill_s": med("prefill_s"), "decode_tok_s": med("decode_tok_s"),
        "runs": runs, "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main()
