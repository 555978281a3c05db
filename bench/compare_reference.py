"""Side by side with the PyTorch reference on identical random full-size weights.

    python -m bench.compare_reference --size full --tokens 100 --json [--recipes fp32,fp16,q8,q4] [--variant turbo]

Writes (once, cached) a random checkpoint in the original format with the reference env, converts
it per recipe, then runs the same end-to-end workload (T3 prefill + exactly N tokens with CFG,
then S3Gen on them) in fresh processes, alternating reference and ours, and then our fastest
recipe once more through the streamer for the time to first audio (the median of STREAM_REPEATS
runs per process, a voice's first sentence and one already used). Ratios are ours/ref.
`--variant turbo|nano` compares with `ChatterboxTurboTTS`: `inference_turbo` (no CFG, its
sampling), S3Gen on the tokens plus 3 silence tokens with 2 meanflow steps.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, dir_size_bytes, machine, run_worker

# A first audio is a few seconds, on a VM whose speed drifts by ~15% from minute to minute: each
# stream process measures it this many times (cold and warm), and the median is reported.
STREAM_REPEATS = 3
REF_PYTHON = os.environ.get("NIGHTINGALE_REF_PYTHON", str(Path.home() / ".cache/nightingale/ref-env/bin/python"))


def cache_dir() -> Path:
    return Path(os.environ.get("NIGHTINGALE_BENCH_CACHE", Path.home() / ".cache/nightingale/bench"))


def checkpoint(size: str, variant: str, seed: int) -> Path:
    out = cache_dir() / f"{size}-{variant}-seed{seed}"
    if not (out / "test_manifest.json").is_file():
        subprocess.run([REF_PYTHON, str(ROOT / "tests/reference/make_checkpoint.py"), "--size", size,
                        "--variant", variant, "--seed", str(seed), "--out", str(out)], check=True)
    return out


def converted(ckpt: Path, variant: str, recipe: str) -> Path:
    from convert.convert import convert
    from tests.reference.sizes import t3_overrides

    out = Path(f"{ckpt}-{recipe}")
    if not (out / "config.json").is_file():
        size = "tiny" if "tiny" in ckpt.name else "full"
        convert(ckpt, out, variant=variant, quantize=recipe, t3_overrides=t3_overrides(size), force=True)
    return out


def t3_bytes_per_token(model_dir: Path) -> int:
    """Weight bytes one decode step must read: the backbone and the speech head (embedding rows
    and position tables are gathered, not streamed)."""
    from convert.checkpoint import read_safetensors

    weights = read_safetensors(model_dir / "t3.safetensors")
    return sum(v.nbytes for k, v in weights.items() if k.startswith(("tfmr.", "speech_head.")))


def copy_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> float:
    """Bytes read + written per second by a large memcpy (numpy), the machine's streaming ceiling."""
    a = np.ones(size_mb * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * a.nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    p.add_argument("--variant", default="en", help="en (no alignment analyzer on either side), turbo or nano")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--recipes", default="fp32,fp16,q8,q4")
    p.add_argument("--pairs", type=int, default=1, help="alternating ref/ours rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--log", type=Path, help="append each finished worker's JSON here as it completes")
    args = p.parse_args(argv)

    def run(module, worker_args, **kw):
        r = run_worker(module, worker_args, **kw)
        if args.log:  # a long comparison keeps what it measured even if stopped later
            with open(args.log, "a") as f:
                f.write(json.dumps(r) + "\n")
        return r

    ckpt = checkpoint(args.size, args.variant, args.seed)
    recipes = args.recipes.split(",")
    models = {r: converted(ckpt, args.variant, r) for r in recipes}
    common = ["--workload", "e2e", "--tokens", args.tokens, "--repeats", 1]
    ref_runs, ours_runs = [], {r: [] for r in recipes}
    for _ in range(args.pairs):
        ref_runs.append(run("bench.ref_worker", [ckpt, "--variant", args.variant, "--size", args.size, *common],
                            python=REF_PYTHON))
        for r in recipes:
            ours_runs[r].append(run("bench.worker", [models[r], *common]))

    def median(runs, key):
        return float(np.median([x[key] for x in runs]))

    metrics = ("decode_tok_s", "prefill_s", "s3gen_s", "total_s", "peak_rss_mb")
    ref = {k: median(ref_runs, k) for k in metrics}
    ours = {r: {**{k: median(ours_runs[r], k) for k in metrics}, "size_on_disk_mb": dir_size_bytes(models[r]) / 2**20}
            for r in recipes}
    fastest = min(recipes, key=lambda r: ours[r]["total_s"])
    # The reference cannot stream: our first audio is compared with its time to the whole audio.
    stream_args = ["--workload", "stream", "--tokens", args.tokens, "--repeats", STREAM_REPEATS]
    stream = [run("bench.worker", [models[fastest], *stream_args]) for _ in range(args.pairs)]
    for key, warm in (("ttfa_s", False), ("ttfa_warm_s", True)):  # a voice's first sentence; later ones
        samples = sorted(r["ttfa_s"] for s in stream for r in s["runs"] if r.get("warm", False) == warm)
        ours[fastest][key], ours[fastest][f"{key}_all"] = float(np.median(samples)), samples
    bandwidth = copy_bandwidth_gbs()
    result = {
        "machine": {**machine(), "copy_bandwidth_gbs": bandwidth},
        "workload": {"size": args.size, "variant": args.variant, "tokens": args.tokens, "cfg_weight": ref_runs[0]["cfg_weight"],
                     "fastest_recipe": fastest},
        "ref": ref,
        "ours": ours,
        "ratios": {
            "t3_decode_tok_s": ours[fastest]["decode_tok_s"] / ref["decode_tok_s"],
            "s3gen_time": ours[fastest]["s3gen_s"] / ref["s3gen_s"],
            "e2e_time": ours[fastest]["total_s"] / ref["total_s"],
            "ttfa_vs_ref_total": ours[fastest]["ttfa_s"] / ref["total_s"],
            "ttfa_warm_vs_ref_total": ours[fastest]["ttfa_warm_s"] / ref["total_s"],
            **({"peak_memory_q4": ours["q4"]["peak_rss_mb"] / ref["peak_rss_mb"]} if "q4" in ours else {}),
        },
    }
    if "fp32" in ours:
        bytes_per_token = t3_bytes_per_token(models["fp32"])
        result["roofline_fraction"] = bytes_per_token * ours["fp32"]["decode_tok_s"] / (bandwidth * 1e9)
        result["machine"]["t3_fp32_bytes_per_token"] = bytes_per_token
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    sys.exit(main())
