"""T3's activation dtype: the logit error of fp16 against bf16 activations, with injected outliers.

    python -m bench.t3_activations [--size full|tiny] [--tokens 48] [--json]

A T3 with seeded random weights (full size by default) is run teacher-forced over one prompt in
fp32, then with every float tensor and activation in fp16 and in bf16 (unquantized, so the
activation dtype is the only difference; and with q8 weights on top). Trained Llamas carry outlier
features: a few residual channels hundreds of times larger than the rest, which the MLP's products
square. `outliers` scales 1% of each layer's norm weights (the channels feeding attention and the
MLP) by --outlier-scale to reproduce them. Reported per case: max |logit error| / max |logit| and
whether every logit stayed finite. The default recipe's `t3_dtype` is picked from these figures.
"""

import argparse
import json

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from nightingale_mlx import quant
from nightingale_mlx.config import T3Config
from nightingale_mlx.models.t3 import T3
from nightingale_mlx.random_weights import random_state_dict


def build(size: str, outlier_scale: float, seed: int = 0):
    """(config, full-precision weights by name), with outlier channels when outlier_scale > 1."""
    cfg = T3Config() if size == "full" else T3Config(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                                     num_attention_heads=2, num_key_value_heads=2)
    spec = [(k, v.shape) for k, v in tree_flatten(T3(cfg).parameters())]
    state = random_state_dict(spec, seed)
    rng = np.random.default_rng(seed)
    if outlier_scale > 1:
        channels = rng.choice(cfg.hidden_size, max(1, cfg.hidden_size // 100), replace=False)
        for k in state:
            if k.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
                state[k] = state[k].copy()
                state[k][channels] *= outlier_scale
    return cfg, state


def logits(cfg, state: dict, bits: int, dtype, tokens: int) -> np.ndarray:
    model = T3(cfg)
    model.update(tree_unflatten([(k, mx.array(v)) for k, v in state.items()]))
    quant.apply(model, bits, 64, dtype)
    rng = np.random.default_rng(1)
    cond = model.condition(mx.array(np.abs(rng.standard_normal((1, 256))).astype(np.float32)),
                           mx.array(rng.integers(0, 6561, (1, 150))), 0.5)
    text = mx.array(rng.integers(1, 700, 20))
    embeds = model.prefill_embeddings(cond, text, cfg=True)
    speech = model.speech_emb(mx.array(rng.integers(0, 6561, (1, tokens)))) + model.speech_pos_emb(tokens)
    x = mx.concatenate([embeds, mx.broadcast_to(speech, (2, tokens, speech.shape[-1])).astype(embeds.dtype)], axis=1)
    hidden, _ = model(x, model.make_cache())
    return np.array(model.speech_head(hidden).astype(mx.float32))


def run(size: str, tokens: int, outlier_scale: float) -> list:
    rows = []
    for case, scale in (("random", 1.0), ("outliers", outlier_scale)):
        cfg, state = build(size, scale)
        ref = logits(cfg, state, 32, mx.float32, tokens)
        for bits in (16, 8):
            for name, dtype in (("fp16", mx.float16), ("bf16", mx.bfloat16)):
                out = logits(cfg, state, bits, dtype, tokens)
                finite = bool(np.isfinite(out).all())
                err = float(np.nanmax(np.abs(out - ref)) / np.abs(ref).max()) if finite else float("inf")
                rows.append({"weights": case, "bits": bits, "activations": name, "finite": finite,
                             "max_rel_logit_err": err, "ref_max_abs_logit": float(np.abs(ref).max())})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--outlier-scale", type=float, default=100.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = run(args.size, args.tokens, args.outlier_scale)
    print("| weights | T3 bits | activations | finite | max logit error / max logit |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weights']} | {r['bits']} | {r['activations']} | {r['finite']} | {r['max_rel_logit_err']:.2e} |")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
