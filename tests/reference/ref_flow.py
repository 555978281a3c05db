"""Runs the reference S3Gen flow (chatterbox-tts 0.1.7) on a checkpoint dir and records what it computes.

Runs in the reference env: `ref_flow.py --ckpt DIR --size tiny --inputs in.npz --out out.npz`.
The inputs hold the tokens, prompt tokens, prompt mel, x-vector and the CFM start noise, all
channels-last; the noise is injected in place of `torch.randn_like` (patches.install_cfm_noise).
Records, channels-last: mu (encoder_proj output), x after every Euler step, the output mel, and
the t fed to the estimator at each step. `--dtype float64` is the exact answer: the module after
`.double()`, float64 inputs, torch's default dtype float64 (for tensors built without one) and
`patches.allow_float64_masks` (the decoder's mask helper whitelists 16/32-bit dtypes).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import patches  # noqa: E402
from make_checkpoint import build_s3gen  # noqa: E402


def load_s3gen(ckpt: Path):
    import torch
    from safetensors.torch import load_file

    manifest = json.loads((ckpt / "test_manifest.json").read_text())["files"]["s3gen"]
    s3gen = build_s3gen()
    path = ckpt / manifest["file"]
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                 weights_only=True)
    result = s3gen.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(manifest["computed"]), result
    return s3gen.eval()


def run(flow, inputs: dict, n_timesteps: int, dtype=None) -> dict:
    """One flow.inference call with the injected noise; spies on the estimator and the solver."""
    import torch

    dec = flow.decoder
    calls, final = [], []
    estimator_forward, solve_euler = dec.estimator.forward, dec.solve_euler

    def estimator_spy(**kw):
        calls.append({k: kw[k][:1].to(dtype).numpy().copy() for k in ("x", "mu", "t")})
        return estimator_forward(**kw)

    def solve_spy(*args, **kw):
        out = solve_euler(*args, **kw)
        final.append(out.to(dtype).numpy().copy())
        return out

    dec.estimator.forward, dec.solve_euler = estimator_spy, solve_spy
    dtype = dtype or torch.float32
    tensor = lambda a: torch.from_numpy(a).to(dtype)  # noqa: E731
    patches.install_cfm_noise(tensor(inputs["noise"]).transpose(1, 2).contiguous())
    tokens = torch.from_numpy(inputs["tokens"]).long()
    prompt = torch.from_numpy(inputs["prompt_tokens"]).long()
    with torch.inference_mode():
        start = time.perf_counter()
        mel, _ = flow.inference(
            token=tokens,
            token_len=torch.tensor([tokens.shape[1]]),
            prompt_token=prompt,
            prompt_token_len=torch.tensor([prompt.shape[1]]),
            prompt_feat=tensor(inputs["prompt_feat"]),
            prompt_feat_len=None,
            embedding=tensor(inputs["embedding"]),
            finalize=True,
            n_timesteps=n_timesteps,
        )
        seconds = time.perf_counter() - start
    dec.estimator.forward, dec.solve_euler = estimator_forward, solve_euler
    # x after step k is the estimator's input at step k + 1; the solver returns the last one.
    steps = [c["x"][0] for c in calls[1:]] + [final[0][0]]
    return {
        "mu": calls[0]["mu"].transpose(0, 2, 1),
        "steps": np.stack(steps).transpose(0, 2, 1),  # (n, T, 80)
        "mel": mel.to(dtype).numpy().transpose(0, 2, 1),
        "t": np.array([c["t"][0] for c in calls]),
        "seconds": np.float64(seconds),
    }


def main(argv=None):
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--size", default="tiny")
    p.add_argument("--inputs", type=Path, required=True, help="npz of scenarios: <name>/<field>")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-timesteps", type=int, default=10)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    if args.dtype == "float64":
        patches.allow_float64_masks()

    torch.set_num_threads(1)  # tiny tensors gain nothing from threads on a contended machine
    patches.apply_sizes(args.size)
    flow = load_s3gen(args.ckpt).flow.to(dtype)
    data = dict(np.load(args.inputs, allow_pickle=False))
    out = {}
    for name in sorted({k.split("/", 1)[0] for k in data}):
        inputs = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(name + "/")}
        for k, v in run(flow, inputs, args.n_timesteps, dtype).items():
            out[f"{name}/{k}"] = v
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
