"""Quantization recipes side by side: size on disk, peak memory and quality against fp32.

    python -m bench.quantization --size full --json [--work DIR] [--checkpoint DIR] [--recipes fp16,q8,q4]

Converts one random-weight English checkpoint (every component) with each recipe and runs
`nightingale_mlx.quality.compare` for each against fp32. `--size full` makes the checkpoint with
the reference env (tests/reference/make_checkpoint.py, ~3 GB) unless `--checkpoint` names one;
`--size tiny` uses the synthetic model's checkpoint (no torch). Converted dirs in `--work` are
reused. Random weights are a proxy for trained ones: see bench/quant_sensitivity.py.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from bench.common import ROOT, machine
from nightingale_mlx import quality

RECIPES = ("fp16", "q8", "q4")


def make_checkpoint(size: str, out: Path) -> Path:
    if (out / "s3gen.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        from nightingale_mlx.synthetic import write_checkpoint

        return write_checkpoint(out)
    from tests.reference.parity import ref_python

    subprocess.run([str(ref_python()), "tests/reference/make_checkpoint.py", "--size", size, "--variant", "en",
                    "--seed", "0", "--out", str(out)], cwd=ROOT, check=True)
    return out


def converted(checkpoint: Path, work: Path, recipe: str, size: str) -> Path:
    from convert.convert import convert
    from nightingale_mlx.synthetic import T3_OVERRIDES

    out = work / recipe
    if not (out / "config.json").is_file():
        convert(checkpoint, out, variant="en", quantize=recipe, force=out.exists(),
                t3_overrides=T3_OVERRIDES if size == "tiny" else None)
    if not (out / "voices" / "default.safetensors").is_file():  # tiny checkpoints have no conds.pt
        from nightingale_mlx.model_io import load_config
        from nightingale_mlx.synthetic import VOICE_RATE, synthetic_voice_wav
        from nightingale_mlx.voice import load_cloning, prepare_voice

        fp32 = work / "fp32"
        voice = prepare_voice(load_cloning(fp32, load_config(fp32).cloning), synthetic_voice_wav(), VOICE_RATE)
        voice.save(out / "voices" / "default.safetensors")
    return out


def table(results) -> str:
    head = "| recipe | size on disk | % of fp32 | peak RSS generating | % of fp32 | T3 logits rel err | KL | top-1 | mel SNR | wav SNR | HiFT alone |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        mem = r.get("memory", {}).get("model", {}).get("generate_mb", float("nan"))
        t3, s3 = r["t3"], r["s3gen"]
        rows.append(f"| {r['recipe']['recipe']} | {r['size_bytes']['model'] / 1e9:.2f} GB | {100 * r['size_ratio']:.0f}% "
                    f"| {mem:.0f} MB | {100 * r.get('memory_ratio', float('nan')):.0f}% "
                    f"| {100 * t3['logits_rel_err']:.2f}% | {t3['kl_mean']:.1e} | {100 * t3['top1_agreement']:.0f}% "
                    f"| {s3['mel_snr_db']:.1f} dB | {s3['wav_snr_db']:.1f} dB | {s3['hift_wav_snr_db']:.1f} dB |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    p.add_argument("--checkpoint", type=Path, help="an existing original checkpoint dir (en)")
    p.add_argument("--work", type=Path, help="where converted dirs go (reused); default: a temp dir")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--steps", type=int, default=quality.DEFAULT_STEPS)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nightingale-quant-"))
    checkpoint = args.checkpoint or make_checkpoint(args.size, work / "checkpoint")
    ref = converted(checkpoint, work, "fp32", args.size)
    results = []
    for recipe in args.recipes.split(","):
        model = converted(checkpoint, work, recipe, args.size)
        results.append(quality.compare(model, ref, steps=args.steps, memory=not args.no_memory))
        print(quality.report(results[-1]), flush=True)
    print(table(results))
    if args.json:
        print(json.dumps({"machine": machine(), "size": args.size, "results": results}))


if __name__ == "__main__":
    main()
