"""Runs the reference T3 (chatterbox-tts 0.1.7) on a checkpoint dir and records what it computes.

Runs in the reference env: `ref_t3.py --ckpt DIR --size tiny --inputs in.npz --out out.npz`.
Records the conditioning tokens, every backbone call's last-row logits (both CFG rows), every
processed distribution that `torch.multinomial` receives, and the tokens. The token at each step
is chosen by the inputs' mode: `teacher` (forced list), `greedy` (argmax) or `sample` (inverse
CDF of shared uniforms), so both implementations follow the same path.
`--dtype float64` runs the same module after `.double()` with float64 inputs (the exact answer
both fp32 implementations are measured against; no arithmetic is changed) and records float64.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import patches  # noqa: E402
from make_checkpoint import T3_FILES, build_t3  # noqa: E402


def choose_fn(inputs):
    mode = str(inputs["mode"])
    if mode == "teacher":
        forced = inputs["forced"]
        return lambda step, p: forced[step]
    if mode == "greedy":
        return lambda step, p: int(np.argmax(p))
    if mode == "sample":
        u = inputs["uniforms"]
        return lambda step, p: int(np.searchsorted(np.cumsum(p), u[step] * p.sum(), side="right"))
    raise ValueError(mode)


def main(argv=None):
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from safetensors.torch import load_file

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--size", default="tiny")
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    patches.apply_sizes(args.size)
    inputs = dict(np.load(args.inputs, allow_pickle=False))
    params = json.loads(str(inputs["params"]))

    t3 = build_t3(args.variant)
    t3.load_state_dict(load_file(str(args.ckpt / T3_FILES[args.variant])))
    t3.eval()
    t3.to(dtype)

    logits, spy = [], patches.MultinomialSpy(choose_fn(inputs), dtype=args.dtype)
    patches.install_logits_spy(logits, dtype=args.dtype)
    patches.install_multinomial_spy(spy)

    cond = T3Cond(
        speaker_emb=torch.from_numpy(inputs["speaker_emb"]).to(dtype),
        cond_prompt_speech_tokens=torch.from_numpy(inputs["prompt_tokens"]).long(),
        emotion_adv=float(inputs["exaggeration"]) * torch.ones(1, 1, 1, dtype=dtype),
    )
    text = torch.from_numpy(inputs["text_tokens"]).long()[None]
    with torch.inference_mode():
        cond_emb = t3.prepare_conditioning(cond).to(dtype).numpy()
        tokens = t3.inference(
            t3_cond=cond,
            text_tokens=torch.cat([text, text]),
            max_new_tokens=params["max_new_tokens"],
            temperature=params["temperature"],
            cfg_weight=params["cfg_weight"],
            repetition_penalty=params["repetition_penalty"],
            min_p=params["min_p"],
            top_p=params["top_p"],
        )
    np.savez(
        args.out,
        cond_emb=cond_emb,
        logits=np.stack(logits),
        probs=np.stack(spy.probs),
        tokens=tokens[0].numpy().astype(np.int64),
    )


if __name__ == "__main__":
    main()
