"""Runs the reference Perth watermarker (resemble-perth 1.0.1 `PerthImplicitWatermarker`, its
trained weights) on the arrays of an input npz. Runs in the reference env:

    ref_watermark.py --inputs in.npz --out out.npz

Inputs: `mark/<name>` float32 samples to watermark and `score/<name>` to only score, each with a
`rate/<name>` (int). Records `marked/<name>` (`apply_watermark`, as generate() calls it) and
`score/<name>` (`get_watermark(round=False)`) for every input and every marked output
(`score/marked/<name>`).
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from perth import PerthImplicitWatermarker

    wm = PerthImplicitWatermarker()
    inputs = dict(np.load(args.inputs))
    out = {}
    for key, samples in inputs.items():
        kind, name = key.split("/", 1)
        if kind not in ("mark", "score"):
            continue
        rate = int(inputs[f"rate/{name}"])
        out[f"score/{name}"] = np.float32(np.mean(wm.get_watermark(samples, sample_rate=rate, round=False)))
        if kind == "mark":
            marked = np.asarray(wm.apply_watermark(samples, sample_rate=rate), np.float32)
            out[f"marked/{name}"] = marked
            out[f"score/marked/{name}"] = np.float32(np.mean(wm.get_watermark(marked, sample_rate=rate, round=False)))
    np.savez(args.out, **out)
    print(f"ref_watermark: {len(out)} arrays -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
